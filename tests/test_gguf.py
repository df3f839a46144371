"""GGUF artifacts and the llama.cpp backend: heterogeneous sub-networks load in llama.cpp and match torch.

The writer tests run wherever llama-cpp-python is installed (it is part of `hwnas[all]`); without
it, the backend says how to install it and the GGUF formats refuse in one line.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from hwnas import gguf_writer
from hwnas.supernet import Supernet

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python not installed (pip install 'hwnas[llamacpp]')")
VOCAB = 320


def bpe_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 style, like SmolLM2's) trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["the tower is tall and the base is square", "a model of the tower in paris"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny(family: str = "llama", tie: bool = True):
    from hwnas.model import LoadedModel
    from hwnas.modeling import FAMILIES

    fam = FAMILIES[family]
    torch.manual_seed(1)
    config = fam.config_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                            tie_word_embeddings=tie)
    return LoadedModel(model=fam.model_cls(config).eval(), tokenizer=bpe_tokenizer(), spec=f"tiny-{family}",
                       source="random", source_hash=f"gguf-{family}", family=fam, load_seconds=0.0)


def tiny_folder(tmp_path, monkeypatch):
    """The tiny llama saved as an HF folder (a model spec a worker can load), with a private graph cache."""
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    base = tiny("llama")
    folder = tmp_path / "model"
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    return folder


def llama_logits(path, ids):
    from hwnas_backends.llamacpp_backend import open_llama

    llm = open_llama(path, n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    llm.eval([int(i) for i in ids])
    out = np.array(llm.scores[: len(ids)])
    llm.close()
    return out


def torch_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids[None])).logits[0].numpy()


IDS = np.random.default_rng(0).integers(0, 300, 40)
HETERO = {"layers": [0, 2, 3], "mlp_widths": [256, 128, 192]}


@needs_llama
@pytest.mark.parametrize("family,subnet,arch", [("llama", None, "llama"), ("llama", HETERO, "deci"),
                                                 ("mistral", HETERO, "deci"), ("qwen2", None, "qwen2")])
def test_written_gguf_matches_torch(tmp_path, family, subnet, arch):
    base = tiny(family, tie=family != "qwen2")
    sn = Supernet(base)
    model = base.model if subnet is None else sn.materialize(sn.parse_subnet(subnet))
    info = gguf_writer.write_gguf(model, tmp_path / "m.gguf",
                                  gguf_writer.vocab_fields(None, base.tokenizer, VOCAB))
    assert info["architecture"] == arch
    assert info["layers"] == len(model.model.layers)
    ref, got = torch_logits(model, IDS), llama_logits(tmp_path / "m.gguf", IDS)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() == 1.0
    assert np.abs(ref - got).max() < 1e-3 * max(1.0, np.abs(ref).max()) + 1e-3


def test_qwen2_with_mixed_widths_is_refused(tmp_path):
    base = tiny("qwen2", tie=False)
    sn = Supernet(base)
    model = sn.materialize(sn.parse_subnet(HETERO))
    with pytest.raises(gguf_writer.GgufError, match="no architecture") as err:
        gguf_writer.arch_for(model)
    assert "\n" not in str(err.value)


def test_non_bpe_tokenizer_is_refused():
    from conftest import tiny_tokenizer

    with pytest.raises(gguf_writer.GgufError, match="byte-level BPE"):
        gguf_writer.vocab_fields(None, tiny_tokenizer(), 128)


@needs_llama
def test_export_quantized_heterogeneous_artifact(tmp_path, monkeypatch):
    from hwnas.export import export, generate, verify

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    sn = Supernet(tiny("llama"))
    m = export(sn, sn.parse_subnet(HETERO), "gguf-q8_0", tmp_path / "art", prefill=16, decode=4)
    assert m["options"]["gguf"]["architecture"] == "deci"
    assert m["options"]["gguf"]["mlp_widths"] == [256, 128, 192]
    assert "model.gguf" in m["files"] and m["backend"] == "llamacpp"
    assert m["verification"]["top1_agreement"] >= 0.9
    assert m["measured"]["decode_ms_per_token"] > 0 and m["roofline"]["weight_bytes"] > 0
    assert verify(tmp_path / "art")["ok"]
    assert isinstance(generate(tmp_path / "art", "the tower", max_new_tokens=4), str)
    f16 = export(sn, sn.parse_subnet(HETERO), "gguf-f16", tmp_path / "f16", measure=False)
    assert f16["verification"]["top1_agreement"] == 1.0
    assert f16["size_mb"] > m["size_mb"] * 1.5  # 16 vs 8.5 bits per weight


@needs_llama
def test_bench_on_llamacpp(tmp_path, monkeypatch):
    from hwnas.bench import bench_subnet

    folder = tiny_folder(tmp_path, monkeypatch)
    r = bench_subnet(str(folder), HETERO, "llamacpp", prefill=16, decode=4, config={"repeats": 3})
    assert r.backend == "llamacpp" and r.prefill_ms > 0 and r.decode_ms_per_token > 0
    # the block graphs of a profile are refused in one line (whole networks only)
    from hwnas.errors import BackendError
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_tasks

    with pytest.raises(BackendError, match="whole networks only"):
        run_tasks("llamacpp", {}, GraphSpec("mlp", str(folder), width=128), [Task("prefill", tokens=4)],
                  workdir=tmp_path / "blk")


def test_without_llama_cpp(monkeypatch, tmp_path):
    """What a user without llama-cpp-python sees: the install line, and a one-line export refusal."""
    from hwnas_backends.llamacpp_backend import LlamaCppBackend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    ok, why = LlamaCppBackend.available()
    assert not ok and "hwnas[llamacpp]" in why
    from hwnas.export import ExportError, export

    sn = Supernet(tiny("llama"))
    with pytest.raises(ExportError, match="needs llama_cpp"):
        export(sn, sn.parse_subnet(HETERO), "gguf-q8_0", tmp_path / "art", measure=False)
    assert not (tmp_path / "art").exists()


@needs_llama
def test_real_model_heterogeneous_f16_matches_torch(smollm2, tmp_path):
    """The embedded default: a 28-layer sub-network with mixed MLP widths as F16 GGUF (its vocabulary
    copied from the package's GGUF) agrees with the torch sub-network on held-out text."""
    from hwnas.export import heldout_tokens

    sn = Supernet(smollm2)
    widths = [1536 if i % 3 else 1024 for i in range(28)]
    sub = sn.parse_subnet({"layers": [i for i in range(30) if i not in (20, 24)], "mlp_widths": widths})
    model = sn.materialize(sub)
    vocab = gguf_writer.vocab_fields(smollm2.source, smollm2.tokenizer, model.config.vocab_size)
    assert dict((k, v) for k, v, *_ in vocab)["tokenizer.ggml.pre"] == "smollm"
    info = gguf_writer.write_gguf(model, tmp_path / "m.gguf", vocab, dtype="f16")
    assert info["architecture"] == "deci"
    ids = heldout_tokens(smollm2.tokenizer, n=96)
    agree = (torch_logits(model, ids).argmax(-1) == llama_logits(tmp_path / "m.gguf", ids).argmax(-1)).mean()
    assert agree >= 0.98


# --- per-block GGUF tensor types (the joint search on llama.cpp) ---------------------------------------------

MIXED = ("q8_0", "q4_0", "f16"), ("q5_0", "fp32", "q8_0"), "q8_0", "q4_0"  # attn, mlp, embed, head of HETERO


@needs_llama
def test_ggml_tensor_quantizer_writes_what_llama_quantize_writes(tmp_path):
    """Per-block Q8_0 through ggml_quantize_chunk is byte for byte llama.cpp's own Q8_0 file."""
    from gguf import GGUFReader

    from hwnas.compression import Compression

    base = tiny("llama")
    sn = Supernet(base)
    model = sn.materialize(sn.parse_subnet(HETERO))
    vocab = gguf_writer.vocab_fields(None, base.tokenizer, VOCAB)
    gguf_writer.write_gguf(model, tmp_path / "f32.gguf", vocab)
    gguf_writer.quantize(tmp_path / "f32.gguf", tmp_path / "llama.gguf", "q8_0")
    info = gguf_writer.write_gguf(model, tmp_path / "ours.gguf", vocab, compression=Compression.uniform("q8_0", 3))
    assert info["tensor_types"] == {"q8_0": 22} and info["tied_head"]
    theirs = {t.name: t for t in GGUFReader(str(tmp_path / "llama.gguf")).tensors}
    ours = {t.name: t for t in GGUFReader(str(tmp_path / "ours.gguf")).tensors}
    assert theirs.keys() == ours.keys()
    for name, t in theirs.items():
        assert t.tensor_type == ours[name].tensor_type, name
        assert np.array_equal(np.asarray(t.data), np.asarray(ours[name].data)), name


@needs_llama
def test_per_block_gguf_computes_what_the_simulation_computes(tmp_path):
    """A sub-network with a different GGUF type per block (and a head apart from the embedding)
    loads in llama.cpp, and the torch simulation of those numerics (`simulate` with the llamacpp
    backend's schemes) is far closer to llama.cpp's logits than the fp32 sub-network is."""
    from hwnas.compression import Compression, schemes_of, simulate

    base = tiny("llama")
    sn = Supernet(base)
    sub = sn.parse_subnet(HETERO)
    comp = Compression(*MIXED)
    model = sn.materialize(sub.architecture, share_weights=True)
    info = gguf_writer.write_gguf(model, tmp_path / "m.gguf", gguf_writer.vocab_fields(None, base.tokenizer, VOCAB),
                                  compression=comp)
    assert not info["tied_head"]  # q4_0 head, q8_0 embedding: stored apart
    got = llama_logits(tmp_path / "m.gguf", IDS)
    fp32 = torch_logits(model, IDS)
    sim = torch_logits(simulate(sn.materialize(sub.architecture, share_weights=True), comp, schemes_of("llamacpp")), IDS)
    assert (sim.argmax(-1) == got.argmax(-1)).mean() >= 0.97
    assert np.abs(sim - got).max() < 0.25 * np.abs(fp32 - got).max()


@needs_llama
def test_export_per_block_gguf_verified_against_the_simulation(tmp_path, monkeypatch):
    from hwnas.compression import Compression
    from hwnas.errors import HwnasUserError
    from hwnas.export import export

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    sn = Supernet(tiny("llama"))
    sub = sn.parse_subnet(HETERO).compressed(Compression(*MIXED))
    m = export(sn, sub, "gguf", tmp_path / "art", measure=False)
    assert m["compression"]["head"] == "q4_0" and m["options"]["gguf"]["dtype"] == "per-block"
    assert m["verification"]["against"].startswith("torch simulation") and m["verification"]["top1_agreement"] >= 0.97
    with pytest.raises(HwnasUserError, match="does not run weight format"):  # ONNX Runtime's int8 is not a GGUF type
        export(sn, sn.parse_subnet(HETERO).compressed(Compression.uniform("int8", 3)), "gguf", tmp_path / "x",
               measure=False)
    assert not (tmp_path / "x").exists()


def test_network_differences_recover_the_operator_rows():
    """Whole-network timings of a known linear cost model give back its attention, MLP and head rows."""
    from types import SimpleNamespace

    from hwnas.profile import OperatorGrid, derive_rows, network_jobs

    config = SimpleNamespace(num_hidden_layers=30, intermediate_size=1536, hidden_size=576, num_attention_heads=9,
                             num_key_value_heads=3, vocab_size=1000, tie_word_embeddings=True)
    grid = OperatorGrid(prefill_tokens=[32], decode_contexts=[128, 512], mlp_widths=[512, 1024, 1536],
                        formats=["fp32", "q8_0"])
    jobs = network_jobs(grid, config)
    assert sorted({(d, w) for d, w, _ in jobs}) == [(4, 1536), (16, 512), (16, 1024), (16, 1536)] and len(jobs) == 8

    def cost(fmt, phase, context):  # head, attention (grows with context), MLP per channel
        k = 0.5 if fmt == "q8_0" else 1.0
        return k * 3.0, k * (0.2 + (0.001 * context if phase == "decode" else 0.3)), k * 0.0007

    rows = []
    for depth, width, fmt in jobs:
        for phase, tokens, context in (("prefill", 32, 0), ("decode", 1, 128), ("decode", 1, 512)):
            head, attn, per_ch = cost(fmt, phase, context)
            ms = head + depth * (attn + per_ch * width)
            rows.append({"depth": depth, "width": width, "format": fmt, "phase": phase, "tokens": tokens,
                         "context": context, "batch": 1, "median_ms": ms, "p90_ms": ms * 1.1, "cv": 0.01,
                         "cv_raw": 0.01, "repeats": 5, "peak_mem_mb": 100.0, "flagged": False, "load": 0.0,
                         "threads": 1})
    out = {(r["op"], r["width"], r["format"], r["phase"], r["context"]): r["median_ms"] for r in derive_rows(rows, grid, config)}
    for fmt in ("fp32", "q8_0"):
        head, attn, per_ch = cost(fmt, "prefill", 0)
        assert out[("head", 0, fmt, "prefill", 0)] == pytest.approx(head)
        assert out[("attention", 0, fmt, "prefill", 0)] == pytest.approx(attn)
        assert out[("mlp", 1024, fmt, "prefill", 0)] == pytest.approx(per_ch * 1024)
        for c in (128, 512):
            assert out[("attention", 0, fmt, "decode", c)] == pytest.approx(cost(fmt, "decode", c)[1])
        assert out[("mlp", 512, fmt, "decode", 0)] == pytest.approx(per_ch * 512)  # one row, context 0
        assert out[("head", 0, fmt, "decode", 0)] == pytest.approx(head)
    assert len(derive_rows(rows[:-1], grid, config)) < len(out)  # a shape not fully timed yields no rows


@needs_llama
def test_profile_on_llamacpp_by_network_differences(tmp_path, monkeypatch):
    from hwnas.latency import FeatureBuilder, Shape
    from hwnas.profile import NETWORKS_FILE, DeviceProfile, OperatorGrid, run_profile
    from hwnas.space import SearchSpace

    folder = tiny_folder(tmp_path, monkeypatch)
    space = SearchSpace.default_for(num_layers=4, intermediate_size=256)
    grid = OperatorGrid(prefill_tokens=[8], decode_contexts=[16], mlp_widths=[128, 256], formats=["fp32", "q8_0"])
    fast = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "min_sample_ms": 0.5}
    prof = run_profile(str(folder), space, "llamacpp", tmp_path / "prof", grid=grid, config=fast, isolate=False)
    assert prof.header["complete"] and prof.header["derived_from"] == NETWORKS_FILE
    keys = {(r["op"], r["width"], r["format"], r["phase"]) for r in prof.rows}
    assert keys == {(op, w, f, ph) for f in ("fp32", "q8_0") for ph in ("prefill", "decode")
                    for op, w in (("attention", 0), ("head", 0), ("mlp", 128), ("mlp", 256))}
    assert len((tmp_path / "prof" / NETWORKS_FILE).read_text().splitlines()) == 1 + 2 * 3 * 2  # header, 3 nets x 2 shapes x 2 formats
    p = DeviceProfile.load(tmp_path / "prof")
    assert p.formats == ["fp32", "q8_0"] and p.lookup("head", "decode", format="q8_0") >= 0
    FeatureBuilder(p, Shape.of(tiny("llama").model.config), [128, 256])  # the latency model reads it like any profile
    timed, table = ((tmp_path / "prof" / f).read_text() for f in (NETWORKS_FILE, "lut.csv"))
    again = run_profile(str(folder), space, "llamacpp", tmp_path / "prof", grid=grid, config=fast, isolate=False)
    assert (tmp_path / "prof" / NETWORKS_FILE).read_text() == timed  # resumed: nothing timed again
    assert (tmp_path / "prof" / "lut.csv").read_text() == table  # nor derived differently (a latency model keys on it)
    assert len(again.rows) == len(prof.rows)

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


def llama_logits(path, ids):
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
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

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    base = tiny("llama")
    folder = tmp_path / "model"
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    r = bench_subnet(str(folder), HETERO, "llamacpp", prefill=16, decode=4, config={"repeats": 3})
    assert r.backend == "llamacpp" and r.prefill_ms > 0 and r.decode_ms_per_token > 0
    # the block graphs of a profile are refused in one line (whole networks only)
    from hwnas_backends.graphs import GraphSpec
    from hwnas_backends.worker import Task, run_tasks

    from hwnas.errors import BackendError

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

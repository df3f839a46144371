"""bf16 / fp16 / fp32 end to end, sub-networks as views of the base, and a few layers of a real
3B-class shape through subnet, eval, bench and export (issue #21)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwnas.errors import HwnasUserError
from hwnas.model import TORCH_DTYPES, load_model, resolve_dtype
from hwnas.subnet import Subnet
from hwnas.supernet import Supernet

REPO = Path(__file__).resolve().parents[1]


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import hwnas.fingerprint as fp

    assert resolve_dtype("bf16") == "bf16" and resolve_dtype(torch.float16) == "fp16"
    monkeypatch.setattr(fp, "isa_flags", lambda: ["avx2", "avx512_bf16"])
    assert resolve_dtype("auto") == "bf16"
    monkeypatch.setattr(fp, "isa_flags", lambda: ["avx2", "fma"])
    assert resolve_dtype("auto") == "fp32"  # no native bf16 matrix products: bf16 would be emulated
    with pytest.raises(HwnasUserError, match="unknown dtype"):
        resolve_dtype("int8")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_load_in_dtype(tiny_model_dir: Path, dtype: str) -> None:
    base = load_model(str(tiny_model_dir), dtype=dtype)
    assert base.dtype == dtype
    assert {p.dtype for p in base.model.parameters()} == {TORCH_DTYPES[dtype]}


def test_shared_materialize_copies_only_sliced_down_projections(tiny_model_dir: Path) -> None:
    base = load_model(str(tiny_model_dir), dtype="bf16")
    sn = Supernet(base)
    full = sn.intermediate_size
    s = Subnet((0, 2, 3), (full, full // 2, full))
    m = sn.materialize(s, share_weights=True)
    src, got = sn.model.model.layers, m.model.layers
    assert got[1].mlp.gate_proj.weight.data_ptr() == src[2].mlp.gate_proj.weight.data_ptr()  # a view
    assert got[1].mlp.down_proj.weight.data_ptr() != src[2].mlp.down_proj.weight.data_ptr()  # sliced: copied
    assert got[1].mlp.down_proj.weight.is_contiguous()
    assert got[0].mlp.down_proj.weight.data_ptr() == src[0].mlp.down_proj.weight.data_ptr()  # whole: shared
    assert got[2].self_attn.q_proj.weight.data_ptr() == src[3].self_attn.q_proj.weight.data_ptr()
    assert m.model.embed_tokens.weight.dtype == torch.bfloat16
    copied = sn.materialize(s)  # to train or prune: every tensor its own
    assert copied.model.layers[1].mlp.gate_proj.weight.data_ptr() != src[2].mlp.gate_proj.weight.data_ptr()
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids).logits, copied(input_ids=ids).logits)


def _hwnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwnas.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_subnet_and_eval_in_bf16(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A bf16 sub-network written from views is the slice of the base, in bf16; eval says its dtype."""
    from safetensors import safe_open

    subnet = tmp_path / "s.json"
    subnet.write_text(json.dumps({"layers": [0, 1, 3], "mlp_widths": [256, 128, 256]}))
    out = tmp_path / "sub"
    r = _hwnas("subnet", "--model", str(tiny_model_dir), "--subnet", str(subnet), "--channel-order", "none",
               "--out", str(out), "--dtype", "bf16", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dtype"] == "bf16"
    base = load_model(str(tiny_model_dir), dtype="bf16").model.model.layers
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        down = f.get_tensor("model.layers.1.mlp.down_proj.weight")
        gate = f.get_tensor("model.layers.2.mlp.gate_proj.weight")
    assert down.dtype == torch.bfloat16 and torch.equal(down, base[1].mlp.down_proj.weight[:, :128])
    assert torch.equal(gate, base[3].mlp.gate_proj.weight)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 120}" for i in range(400)))
    r = _hwnas("eval", "--model", str(out), "--tasks", f"text:{text}", "--ppl-window", "64", "--dtype", "bf16",
               "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dtype"] == "bf16"


def test_search_refuses_to_mix_dtypes(tmp_path: Path, tiny_llama) -> None:
    from hwnas.search import RunConfig, Search
    from hwnas.search.store import STORE_FILE

    with pytest.raises(HwnasUserError, match="dtype"):
        RunConfig.from_dict({"dtype": "int4"})
    run = tmp_path / "run"
    cfg = RunConfig(model="tiny", channel_order="none", tasks=["wikitext2"], limit=None, ppl_windows=1,
                    ppl_window=32)

    class _Eval:  # never called: the refusal comes first
        pass

    Search(cfg, run, supernet=Supernet(tiny_llama), evaluator=_Eval())  # fp32 run folder made
    rec = {"version": 1, "index": 0, "subnet": {"layers": [0, 1, 2, 3], "mlp_widths": [256] * 4}, "dtype": "bf16"}
    (run / STORE_FILE).write_text(json.dumps(rec) + "\n")
    with pytest.raises(HwnasUserError, match="evaluations in bf16"):
        Search(cfg, run, supernet=Supernet(tiny_llama), evaluator=_Eval())


def test_bf16_model_composes_an_fp32_graph(tmp_path: Path, tiny_model_dir: Path) -> None:
    """ONNX Runtime gets an fp32 graph from a bf16 model, equal to the fp32 upcast of its weights."""
    import numpy as np
    import onnxruntime as ort
    from hwnas_backends.onnx_export import export_onnx

    from hwnas.measure.graphs import build_module

    base = load_model(str(tiny_model_dir), dtype="bf16")
    module, io = build_module(base.model, "model")
    path = export_onnx(module, io, tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = io.make_x(1, 7)
    past = io.make_past(1, 0)
    got = sess.run(None, dict(zip(io.input_names, [x.numpy(), *[p.numpy() for p in past]])))[0]
    assert got.dtype == np.float32
    ref = load_model(str(tiny_model_dir), dtype="bf16").model.float()  # the same weights, fp32 compute
    with torch.no_grad():
        want = ref(input_ids=x).logits[:, -1].numpy()
    assert np.abs(got.reshape(-1)[-want.size:] - want.reshape(-1)).max() < 1e-3


@pytest.fixture(scope="module")
def real_shape_3b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers of the Llama-3.2-3B shape (hidden 3072, MLP 8192, 24/8 heads, vocab 128,256):
    0.6 B parameters, 1.1 GiB in bf16, 2.4 GB as an fp32 graph (past protobuf's 2 GB)."""
    out = tmp_path_factory.mktemp("shapes") / "llama3.2-3b-2layers"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench_sizes.py"), "make", "llama3.2-3b", str(out),
                        "--layers", "2"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return out


def test_real_3b_shape_through_the_pipeline(tmp_path: Path, real_shape_3b: Path) -> None:
    """subnet, eval, bench (ONNX Runtime) and export openvino-int8 of a bf16 3B-shape model, each in
    its own process with peak RSS measured: the large-shape paths (external graph data, vocab
    128k, GQA 24/8) run every time CI does, within memory bounds of the model's own size."""
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench_sizes.py"), "run", str(real_shape_3b),
                        "--dtype", "bf16", "--steps", "subnet,eval,bench-ort,export-ov-int8",
                        "--work", str(tmp_path / "w"), "--json-out", str(tmp_path / "rows.json")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["step"]: x for x in json.loads((tmp_path / "rows.json").read_text())}
    for step, row in rows.items():
        assert row["rc"] == 0 and not row["killed"], (step, row, (tmp_path / "w" / f"{step}-bf16.log").read_text()[-1500:])
    size_gb = (real_shape_3b / "model.safetensors").stat().st_size / 2**30
    # slicing and scoring hold the base once (views), plus the interpreter and libraries (~0.5 GB)
    assert rows["subnet"]["peak_gb"] < 1.5 * size_gb + 0.6, rows["subnet"]
    assert rows["eval"]["peak_gb"] < 1.5 * size_gb + 1.0, rows["eval"]


def test_graph_cache_keeps_to_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Least recently used graphs go first; templates, the graph in use and foreign folders stay."""
    import os

    from hwnas.measure.graphs import touch_graph, trim_graph_cache

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path))
    for i, name in enumerate(["model-a", "model-b", "mlp-c", "model-d", "template-t", "mine"]):
        d = tmp_path / name
        d.mkdir()
        (d / "graph.onnx").write_bytes(b"x" * 1000)
        os.utime(d, (1000 + i, 1000 + i))
    touch_graph(tmp_path / "model-a")  # used just now: the most recent
    removed = trim_graph_cache(keep=tmp_path / "model-d", budget_gb=2.5e-6)  # room for 2.5 graphs
    assert sorted(p.name for p in removed) == ["mlp-c", "model-b"]
    assert {p.name for p in tmp_path.iterdir()} == {"model-a", "model-d", "template-t", "mine"}


@pytest.mark.parametrize("kind", ["model", "attention"])
def test_torch_backend_measures_in_the_load_dtype(tiny_model_dir: Path, kind: str) -> None:
    """The torch backend computes in the dtype the model was loaded in (its cache and inputs too)."""
    from hwnas.bench import bench_subnet
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_tasks

    if kind == "model":
        res = bench_subnet(str(tiny_model_dir), None, "torch", prefill=8, decode=2, isolate=False, probe=False,
                           dtype="bf16", config={"min_time_s": 0.01, "repeats": 2})
        assert res.dtype == "bf16" and res.decode_ms_per_token > 0
    else:
        out = run_tasks("torch", {"min_time_s": 0.01, "repeats": 2},
                        GraphSpec("attention", str(tiny_model_dir), dtype="bf16"),
                        [Task("prefill", 8), Task("decode", context=8, steps=2)])
        assert all(m.median_ms > 0 for m in out.measurements)

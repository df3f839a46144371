"""The backend interface on tiny random models: every available backend prepares a whole
sub-network (heterogeneous MLP widths) and operator blocks, matches torch, and measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hwnas.cli import main
from hwnas.errors import BackendError
from hwnas.measure.backend import Backend, BackendConfig, Measurement, backend_class, backend_names, summarize
from hwnas.measure.graphs import GraphSpec, build_module
from hwnas.measure.worker import Task, run_isolated, run_tasks
from hwnas.supernet import Supernet

FAST = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "min_sample_ms": 0.5, "cv_threshold": 10.0}
IN_PROCESS = ["torch", "onnxruntime", "openvino"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))


def _available(name: str) -> bool:
    return backend_class(name).available()[0]


def _hetero(tiny_llama):
    sn = Supernet(tiny_llama)
    return sn.materialize(sn.parse_subnet({"layers": [0, 1, 3], "mlp_widths": [64, 256, 128]}))


def test_entry_points_list_without_importing_runtimes():
    assert {"torch", "onnxruntime", "openvino", "deepsparse"} <= set(backend_names())
    code = ("import sys; from hwnas.measure.backend import backend_names, backend_class; backend_names();"
            "[backend_class(n).available() for n in backend_names()];"
            "print([m for m in ('onnxruntime', 'openvino', 'deepsparse', 'onnx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_backend_is_a_user_error():
    with pytest.raises(BackendError, match="unknown backend"):
        backend_class("tensorrt-nope")


def test_export_wrapper_matches_transformers(tiny_llama):
    model = _hetero(tiny_llama)
    module, io = build_module(model, "model")
    ids = torch.randint(0, 128, (2, 7))
    nxt = torch.randint(0, 128, (2, 1))
    with torch.no_grad():
        ref = model(ids).logits[:, -1:]
        ref2 = model(torch.cat([ids, nxt], 1)).logits[:, -1:]
        out = module(ids)
        out2 = module(nxt, *out[1:])
    assert (out[0] - ref).abs().max() < 1e-5
    assert (out2[0] - ref2).abs().max() < 1e-5
    assert [t.shape[2] for t in out2[1:]] == [8] * 6


@pytest.mark.parametrize("name", IN_PROCESS)
def test_backend_matches_torch_and_measures(name, tiny_llama, tmp_path):
    if not _available(name):
        pytest.skip(backend_class(name).available()[1])
    model = _hetero(tiny_llama)
    module, io = build_module(model, "model")
    ids = torch.randint(0, 128, (1, 9))
    nxt = torch.randint(0, 128, (1, 1))
    with torch.no_grad():
        ref = model(ids).logits[:, -1:].numpy()
        ref2 = model(torch.cat([ids, nxt], 1)).logits[:, -1:].numpy()
    cls = backend_class(name)
    be = cls(cls.CONFIG.from_dict(FAST))
    be.prepare(module, io, tmp_path)
    be.load_past(io.make_past(1, 0))
    be.step(ids)
    np.testing.assert_allclose(be.outputs(), ref, atol=1e-4)
    be.step(nxt)  # decode with the cache the prefill left
    np.testing.assert_allclose(be.outputs(), ref2, atol=1e-4)
    p = be.prefill(8)
    d = be.decode(16)
    for m, phase in ((p, "prefill"), (d, "decode")):
        assert isinstance(m, Measurement) and m.phase == phase
        assert m.median_ms > 0 and m.p90_ms >= m.median_ms and m.repeats >= 3
        assert m.peak_mem_mb > 50 and m.threads == 1 and m.load >= 0
    assert d.context == 16 and p.tokens == 8


@pytest.mark.parametrize("name", IN_PROCESS)
@pytest.mark.parametrize("kind", ["attention", "mlp", "head"])
def test_operator_blocks_measure(name, kind, tiny_model_dir):
    if not _available(name):
        pytest.skip(backend_class(name).available()[1])
    tasks = [Task("prefill", tokens=8), Task("decode", context=16)]
    res = run_tasks(name, FAST, GraphSpec(kind, str(tiny_model_dir), width=64 if kind == "mlp" else None), tasks)
    assert [m.phase for m in res.measurements] == ["prefill", "decode"]
    assert all(m.median_ms > 0 for m in res.measurements)
    assert res.versions


def test_isolated_worker_and_converted_graph_reuse(tiny_model_dir, tmp_path):
    spec = GraphSpec("model", str(tiny_model_dir), subnet={"layers": [0, 2], "mlp_widths": [128, 64]})
    res = run_isolated("onnxruntime", FAST, spec, [Task("prefill", tokens=8), Task("decode", context=8, steps=2)])
    assert res.measurements[1].context == 8 and res.device.startswith("cpu")
    assert list((tmp_path / "graphs").glob("model-*/graph.onnx"))  # converted once, reused next time
    assert all(m.min_ms <= m.p10_ms <= m.median_ms <= m.p90_ms for m in res.measurements)
    assert len(res.measurements[0].samples_ms) == res.measurements[0].repeats  # the worker sends its repeats
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:  # placement options reach the worker
        pinned = run_isolated("onnxruntime", {**FAST, "pin": True, "hugepages": True}, spec, [Task("prefill", tokens=8)])
        assert pinned.extra["cpus"] == sorted(os.sched_getaffinity(0))[-1:]
        assert "glibc.malloc.hugetlb=1" in pinned.extra["glibc_tunables"]
        assert res.extra["cpus"] == sorted(os.sched_getaffinity(0)) and not res.extra["glibc_tunables"]


def test_noisy_measurement_is_repeated_and_flagged():
    class Jittery(Backend):
        NAME = "jitter"

        def prepare(self, module, io, workdir):
            self.n = 0

        def load_past(self, past):
            pass

        def step(self, x):
            self.n += 1
            time.sleep(0.004 if self.n % 2 else 0.0005)

    from hwnas_backends.onnx_export import GraphIO

    be = Jittery(BackendConfig(warmup=0, repeats=6, min_time_s=0, min_sample_ms=0, cv_threshold=0.1, retries=1))
    be.prepare(None, None, None)
    be.io = GraphIO("hidden", 4, 0, 0, 1, 1)
    m = be.prefill(2)
    assert m.flagged and m.cv > 0.1
    assert be.n == 2 + 2 * 6  # calibration calls, then the measurement and its one repeat
    assert summarize([1.0, 1.0, 1.0, 5.0])[2] == 0.0  # one interrupted sample does not flag


def test_bench_cli_prints_exactly_the_issue_object(tiny_model_dir, tmp_path, capsys):
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps({"layers": [0, 1], "mlp_widths": [64, 256]}))
    rc = main(["bench", "--model", str(tiny_model_dir), "--subnet", str(sub), "--backend", "torch",
               "--prefill", "8", "--decode", "2", "--json", "--in-process"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["backend", "prefill_ms", "decode_ms_per_token", "peak_mem_mb", "repeats", "cv_prefill",
                         "cv_decode", "device"]
    assert out["backend"] == "torch" and out["prefill_ms"] > 0 and out["decode_ms_per_token"] > 0


def test_backends_cli_lists_availability(capsys):
    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["torch"]["available"] and "torch" in rows["torch"]["versions"]
    assert all(r["available"] or r["reason"] for r in rows.values())


def test_bench_unknown_backend_exits_2(tiny_model_dir, capsys):
    assert main(["bench", "--model", str(tiny_model_dir), "--backend", "nope", "--in-process"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_deepsparse_small(tiny_model_dir, tmp_path):
    """One small DeepSparse test: its venv is created if missing (CI: ~30 s, ~485 MB), and every
    static shape compiles an engine (seconds each), so only one prefill and one decode shape."""
    from hwnas_backends import deepsparse_backend as ds

    ok, why = ds.DeepSparseBackend.available()
    if not ok:
        if not os.environ.get("CI"):
            pytest.skip(why)
        ds.setup_venv(log=lambda m: None)
    hetero = {"layers": [0, 1, 3], "mlp_widths": [64, 256, 128]}
    res = run_tasks("deepsparse", FAST, GraphSpec("model", str(tiny_model_dir), subnet=hetero),
                    [Task("prefill", tokens=8), Task("decode", context=16, steps=2)])
    assert all(m.median_ms > 0 for m in res.measurements)
    assert res.versions["deepsparse"] == "1.8.0"


@pytest.mark.gpu
def test_torch_cuda_backend(tiny_llama, tmp_path):
    from hwnas_backends.torch_backend import TorchBackend, TorchConfig

    module, io = build_module(tiny_llama.model, "model")
    be = TorchBackend(TorchConfig(device="cuda", **FAST))
    be.prepare(module, io, tmp_path)
    m = be.decode(16)
    assert m.median_ms > 0 and m.peak_mem_mb > 0 and be.device().startswith("cuda")


def test_import_hwnas_is_cheap_and_still_registers_with_transformers() -> None:
    """`import hwnas` leaves transformers unimported (a measuring worker starts in ~1 s, not ~5 s),
    and the per-layer-width classes are registered the moment transformers is imported."""
    import subprocess
    import sys

    code = ("import sys, hwnas, hwnas.errors, hwnas.fileio\n"
            "assert 'transformers' not in sys.modules, 'import hwnas pulled in transformers'\n"
            "from transformers import AutoConfig\n"
            "print(AutoConfig.for_model('hwnas_llama').model_type)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "hwnas_llama"


def test_a_module_that_imports_transformers_first_still_registers() -> None:
    """`import hwnas` then a module whose own import pulls in transformers (hwnas.latency ->
    hwnas.modeling): the post-import hook must not re-enter the half-loaded hwnas.modeling
    (it did: ImportError in tools/bench_latency.py), and the classes end up registered."""
    import subprocess
    import sys

    code = ("import hwnas\nimport hwnas.latency\n"
            "from transformers import AutoConfig\n"
            "print(AutoConfig.for_model('hwnas_qwen2').model_type)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "hwnas_qwen2"

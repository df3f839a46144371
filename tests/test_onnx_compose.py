"""Whole-model graphs composed from block templates: same numerics as torch, any layers and widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from hwnas_backends import onnx_compose
from hwnas_backends.onnx_export import export_onnx

from hwnas.measure.graphs import build_module
from hwnas.supernet import Supernet


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path_factory.getbasetemp() / "graph-cache"))


def _subnet_module(loaded, layers, widths):
    sn = Supernet(loaded)
    model = sn.materialize(sn.parse_subnet({"layers": layers, "mlp_widths": widths}), share_weights=True)
    return build_module(model, "model")


def _run(path, io, x, past):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, dict(zip(io.input_names, [x.numpy(), *[p.numpy() for p in past]])))


def test_composed_graph_matches_torch_every_family(tiny_any_family, tmp_path) -> None:
    module, io = _subnet_module(tiny_any_family, [0, 2, 3], [256, 128, 64])
    path = onnx_compose.compose_onnx(module, io, tmp_path / "graph.onnx")
    for tokens, context in ((5, 0), (1, 7)):  # prefill from an empty cache, then one decode step
        x, past = io.make_x(2, tokens), io.make_past(2, context)
        with torch.no_grad():
            ref = module(x, *past)
        got = _run(path, io, x, past)
        assert len(got) == len(ref) == 1 + 2 * 3
        for r, g in zip(ref, got):
            assert r.shape == g.shape
            np.testing.assert_allclose(g, r.numpy(), atol=2e-5, rtol=1e-4)


def test_templates_are_exported_once_per_architecture(tiny_llama, tmp_path, monkeypatch) -> None:
    module, io = _subnet_module(tiny_llama, [0, 1, 2, 3], [256] * 4)
    onnx_compose.compose_onnx(module, io, tmp_path / "a.onnx")

    def no_export(*a, **k):
        raise AssertionError("re-traced a cached template")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    other, io2 = _subnet_module(tiny_llama, [1, 3], [64, 192])  # other layers and widths: same templates
    onnx_compose.compose_onnx(other, io2, tmp_path / "b.onnx")
    x, past = io2.make_x(1, 3), io2.make_past(1, 2)
    with torch.no_grad():
        ref = other(x, *past)
    np.testing.assert_allclose(_run(tmp_path / "b.onnx", io2, x, past)[0], ref[0].numpy(), atol=2e-5, rtol=1e-4)


def test_export_onnx_falls_back_to_a_full_export(tiny_llama, tmp_path, monkeypatch) -> None:
    module, io = _subnet_module(tiny_llama, [0, 3], [256, 128])

    def refuse(*a, **k):
        raise onnx_compose.ComposeError("cannot")

    monkeypatch.setattr(onnx_compose, "compose_onnx", refuse)
    path = export_onnx(module, io, tmp_path / "graph.onnx")
    import onnx

    assert onnx.load(str(path)).producer_name != "hwnas"  # the dynamo exporter wrote it
    x, past = io.make_x(1, 4), io.make_past(1, 0)
    with torch.no_grad():
        ref = module(x, *past)
    np.testing.assert_allclose(_run(path, io, x, past)[0], ref[0].numpy(), atol=2e-5, rtol=1e-4)


def test_compose_can_be_switched_off(tiny_llama, tmp_path, monkeypatch) -> None:
    import onnx

    module, io = _subnet_module(tiny_llama, [0, 1], [256, 256])
    assert onnx.load(str(export_onnx(module, io, tmp_path / "a.onnx"))).producer_name == "hwnas"
    monkeypatch.setenv("HWNAS_GRAPH_COMPOSE", "0")
    assert onnx.load(str(export_onnx(module, io, tmp_path / "b.onnx"))).producer_name != "hwnas"


def test_large_models_keep_weights_in_external_data(tiny_llama, tmp_path, monkeypatch) -> None:
    module, io = _subnet_module(tiny_llama, [0, 2], [256, 64])
    monkeypatch.setattr(onnx_compose, "EXTERNAL_DATA_BYTES", 1000)
    path = onnx_compose.compose_onnx(module, io, tmp_path / "graph.onnx")
    assert (tmp_path / "graph.onnx.data").stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.onnx", "graph.onnx.data"]
    x, past = io.make_x(1, 4), io.make_past(1, 0)
    with torch.no_grad():
        ref = module(x, *past)
    np.testing.assert_allclose(_run(path, io, x, past)[0], ref[0].numpy(), atol=2e-5, rtol=1e-4)


def test_openvino_reads_the_composed_graph(tiny_llama) -> None:
    pytest.importorskip("openvino")
    import openvino as ov
    from hwnas_backends.onnx_export import convert_openvino

    module, io = _subnet_module(tiny_llama, [0, 2, 3], [64, 256, 128])
    compiled = ov.Core().compile_model(convert_openvino(module, io, stateful=False), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    x, past = io.make_x(1, 3), io.make_past(1, 4)
    with torch.no_grad():
        ref = module(x, *past)
    got = compiled([x.numpy(), *[p.numpy() for p in past]])
    for i, r in enumerate(ref):
        np.testing.assert_allclose(got[i], r.numpy(), atol=2e-5, rtol=1e-4)


def test_driver_converts_and_the_worker_needs_no_model_config(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """run_isolated composes the graph in the calling process; the worker reads graph_io.json."""
    from hwnas.measure.graphs import GRAPH_IO_FILE, GraphSpec, graph_cache_dir
    from hwnas.measure.worker import Task, run_isolated

    spec = GraphSpec("model", str(tiny_model_dir), subnet={"layers": [0, 2], "mlp_widths": [256, 128]})
    res = run_isolated("onnxruntime", {"threads": 1}, spec, [Task("decode", context=4, steps=2)])
    assert res.measurements[0].median_ms > 0
    folder = graph_cache_dir(spec)
    assert (folder / GRAPH_IO_FILE).is_file() and (folder / "graph.onnx.data").is_file()

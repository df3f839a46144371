"""Every artifact format round-trips on a tiny model: export -> verify -> run; tampering is caught."""

import json
import os

import pytest

from hwnas.export import FORMATS, ExportError, export, generate, verify
from hwnas.supernet import Supernet

CPU_FORMATS = ["hf", "onnx", "onnx-int8", "onnx-int4", "openvino", "openvino-int8", "openvino-int4", "openvino-w8a8"]
SUBNET = {"layers": [0, 2, 3], "mlp_widths": [256, 128, 192]}


@pytest.fixture(scope="module")
def tiny_sn():
    from conftest import make_tiny

    return Supernet(make_tiny("llama", seed=3))


@pytest.fixture(scope="module")
def artifacts(tiny_sn, tmp_path_factory):
    """Each format exported once (ONNX export is the slow part); onnx-int8 also measured."""
    root = tmp_path_factory.mktemp("artifacts")
    mp = pytest.MonkeyPatch()
    mp.setenv("HWNAS_GRAPH_CACHE", str(root / "graphs"))
    out = {}
    for fmt in CPU_FORMATS:
        m = export(tiny_sn, tiny_sn.parse_subnet(SUBNET), fmt, root / fmt, measure=fmt == "onnx-int8",
                   prefill=16, decode=4)
        out[fmt] = (root / fmt, m)
    yield out
    mp.undo()


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_format_round_trip(fmt, artifacts):
    out, m = artifacts[fmt]
    v = m["verification"]
    assert m["format"] == fmt and (out / "manifest.json").is_file() and (out / "tokenizer.json").is_file()
    if FORMATS[fmt].precision == "fp32":
        assert v["max_abs_diff"] < 1e-3 and v["cosine"] > 0.99999 and v["top1_agreement"] == 1.0
    else:
        assert v["cosine"] > 0.98 and v["top1_agreement"] > 0.8
    rep = verify(out)
    assert rep["ok"], rep
    text = generate(out, "w1 w2 w3", max_new_tokens=4)
    assert isinstance(text, str)


def test_w8a8_quantizes_activations_after_calibration(artifacts):
    """openvino-w8a8 is NNCF's post-training quantization (activations too, SmoothQuant), not weight
    compression: the IR carries activation FakeQuantize nodes, and the manifest its calibration."""
    from collections import Counter

    import openvino as ov

    out, m = artifacts["openvino-w8a8"]
    ops = Counter(op.get_type_name() for op in ov.Core().read_model(out / "openvino_stateful.xml").get_ops())
    assert ops["FakeQuantize"] >= 4 and ops["ReadValue"] > 0  # quantized, and still stateful
    cal = m["options"]["calibration"]
    assert cal["prompts"] > 0 and cal["data"].startswith("alpaca") and cal["smooth_quant_alpha"] == 0.95
    _, weights_only = artifacts["openvino-int8"]
    assert "calibration" not in weights_only["options"]


def test_tampered_file_fails_verify(artifacts, tmp_path):
    import shutil

    src, m = artifacts["onnx"]
    out = tmp_path / "a"
    shutil.copytree(src, out)
    assert verify(out)["ok"]
    weights = out / "graph.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    rep = verify(out)
    assert not rep["ok"] and rep["changed_or_missing"] == ["graph.onnx"]
    assert json.loads((out / "manifest.json").read_text())["files"]["graph.onnx"] == m["files"]["graph.onnx"]


def test_measured_artifact_has_figures(artifacts):
    _, m = artifacts["onnx-int8"]
    ms = m["measured"]
    assert ms["prefill_ms"] > 0 and ms["decode_ms_per_token"] > 0 and ms["peak_mem_mb"] > 0
    assert m["roofline"]["decode_bound_ms"] > 0


def test_deepsparse_sparse_artifact(tiny_sn, tmp_path, monkeypatch):
    """Magnitude pruning -> DeepSparse-compiled graphs; verified (ORT on the same graph) and measured."""
    from hwnas_backends.deepsparse_backend import DeepSparseBackend

    ok, why = DeepSparseBackend.available()
    if not ok and os.environ.get("CI"):  # CI makes the venv (about 30 s) rather than skip
        from hwnas_backends.deepsparse_backend import setup_venv

        setup_venv(log=lambda m: None)
        ok, why = DeepSparseBackend.available()
    if not ok:
        pytest.skip(why)
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    m = export(tiny_sn, tiny_sn.parse_subnet(SUBNET), "deepsparse", tmp_path / "ds", prefill=8, decode=2,
               options={"sparsity": 0.5})
    assert m["options"]["achieved_sparsity"]["mlp"] == pytest.approx(0.5, abs=0.02)
    assert 0 < m["verification"]["top1_agreement"] <= 1 and m["measured"]["decode_ms_per_token"] > 0
    assert verify(tmp_path / "ds")["ok"]
    assert not list((tmp_path / "tmp").glob("hwnas-verify-*"))  # the runner's link folders are gone
    dense = tiny_sn.materialize(tiny_sn.parse_subnet(SUBNET))  # pruning worked on a copy, not the super-network
    assert (dense.model.layers[0].mlp.gate_proj.weight == 0).float().mean() < 0.01


def test_refusals(tiny_sn, tmp_path):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="CUDA"):
            export(tiny_sn, tiny_sn.parse_subnet(SUBNET), "bnb-int8", tmp_path / "b", measure=False)
    with pytest.raises(ExportError, match="group size 128"):
        export(tiny_sn, tiny_sn.parse_subnet(SUBNET), "openvino-int4", tmp_path / "i4", measure=False,
               options={"group_size": 128})
    with pytest.raises(ExportError, match="unknown format"):
        export(tiny_sn, tiny_sn.parse_subnet(SUBNET), "tflite", tmp_path / "x")

"""Operator profiling into a device profile: grid, files, lookup, resume; and the fingerprint."""

from __future__ import annotations

import csv

import pytest
import yaml

from hwnas.cli import main
from hwnas.errors import ProfileError
from hwnas.fingerprint import fingerprint
from hwnas.profile import COLUMNS, DeviceProfile, OperatorGrid, grid_for, run_profile
from hwnas.space import SearchSpace

FAST = {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "min_sample_ms": 0.5}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))


def _grid() -> OperatorGrid:
    return OperatorGrid(prefill_tokens=[4, 16], decode_contexts=[8, 32], mlp_widths=[64, 256])


def test_smollm2_default_grid_size():
    space = SearchSpace.packaged("smollm2-135m", num_layers=30, intermediate_size=1536)
    grid = grid_for(None, space)
    assert grid.mlp_widths == [256, 512, 768, 1024, 1280, 1536]
    assert grid.size() == 6 + 6 * 4 + 4  # attention 3+3, MLP 3+1 per width, head 3+1
    assert [j[0] for j in grid.jobs()].count("mlp") == 6


def test_profile_writes_resumes_and_looks_up(tiny_model_dir, tmp_path):
    space = SearchSpace.default_for(num_layers=4, intermediate_size=256)
    out = tmp_path / "prof"
    prof = run_profile(str(tiny_model_dir), space, "torch", out, grid=_grid(), config=FAST, isolate=False)
    assert prof.header["complete"] and len(prof.rows) == _grid().size() == 13  # attention 2+2, mlp 2x(2+1), head 2+1
    header = yaml.safe_load((out / "profile.yaml").read_text())
    assert header["version"] == 1 and header["backend"] == "torch" and header["fingerprint"]["cpu_model"]
    assert header["versions"]["torch"] and header["grid"]["mlp_widths"] == [64, 256]
    with open(out / "lut.csv") as f:
        assert tuple(csv.DictReader(f).fieldnames) == COLUMNS

    p = DeviceProfile.load(out)
    exact = p.lookup("mlp", "prefill", width=256, tokens=16)
    assert exact == next(r["median_ms"] for r in p.rows if r["op"] == "mlp" and r["width"] == 256
                         and r["tokens"] == 16)
    lo, hi = p.lookup("attention", "decode", context=8), p.lookup("attention", "decode", context=32)
    mid = p.lookup("attention", "decode", context=20)
    assert min(lo, hi) <= mid <= max(lo, hi)
    assert p.lookup("mlp", "decode", width=64, context=999) == p.lookup("mlp", "decode", width=64)
    assert p.sum_ops([64, 256], "decode", context=8) > p.lookup("head", "decode")
    with pytest.raises(ProfileError):
        p.lookup("mlp", "prefill", width=128, tokens=4)
    with pytest.raises(ProfileError):
        p.lookup("conv", "prefill")

    # a killed run: drop rows, resume, only the missing ones are measured again
    kept = [r for r in p.rows if r["op"] != "mlp" or r["width"] != 256]
    DeviceProfile(p.header, kept, out).save()
    again = run_profile(str(tiny_model_dir), space, "torch", out, grid=_grid(), config=FAST, isolate=False)
    assert len(again.rows) == 13
    same = {(r["op"], r["width"], r["phase"], r["tokens"], r["context"]): r["median_ms"] for r in again.rows}
    assert all(same[(r["op"], r["width"], r["phase"], r["tokens"], r["context"])] == r["median_ms"] for r in kept)

    other = OperatorGrid(prefill_tokens=[4], decode_contexts=[8], mlp_widths=[64])
    with pytest.raises(ProfileError, match="different grid"):
        run_profile(str(tiny_model_dir), space, "torch", out, grid=other, config=FAST, isolate=False)


def test_profile_cli_on_onnxruntime(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ort"
    rc = main(["profile", "--model", str(tiny_model_dir), "--backend", "onnxruntime", "--out", str(out),
               "--prefill", "4", "--decode", "8", "--in-process", "--json"])
    assert rc == 0
    prof = DeviceProfile.load(out)
    assert prof.header["complete"] and prof.backend == "onnxruntime"
    assert {r["op"] for r in prof.rows} == {"attention", "mlp", "head"}


def test_missing_profile_is_a_user_error(tmp_path):
    with pytest.raises(ProfileError, match="hwnas profile"):
        DeviceProfile.load(tmp_path)


def test_fingerprint_has_identity_and_roofline():
    fp = fingerprint(threads=1)
    assert fp.cpu_model and fp.logical_cpus >= 1 and fp.memory_gb > 0 and fp.python
    assert fp.roofline["bandwidth_gbs"] > 0.5 and fp.roofline["peak_gflops"] > 0.5
    assert fp.slug and " " not in fp.slug

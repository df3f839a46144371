"""Measuring under load: busy windows are re-measured (bounded), then refused -- never stored silently.

The other processes' load is faked (LoadMeter patched) so the tests do not depend on this machine;
tools/load_test.py shows the same behaviour with a real bandwidth hog on the other core."""

from __future__ import annotations

import json

import pytest

import hwnas.measure.backend as base
from hwnas.cli import main
from hwnas.errors import HwnasUserError
from hwnas.profile import DeviceProfile, OperatorGrid, run_profile
from hwnas.space import SearchSpace

FAST = {"threads": 1, "warmup": 1, "repeats": 3, "min_time_s": 0.0, "load_wait_s": 0.0, "cv_threshold": 10.0}


class FakeLoad:
    """A LoadMeter whose readings come from a list (the last one repeats)."""

    readings: list[float] = [0.0]
    calls = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        i = min(FakeLoad.calls, len(FakeLoad.readings) - 1)
        FakeLoad.calls += 1
        self.cores = FakeLoad.readings[i]


@pytest.fixture
def fake_load(monkeypatch):
    monkeypatch.setattr(base, "LoadMeter", FakeLoad)
    monkeypatch.delenv("HWNAS_MAX_LOAD", raising=False)  # the shipped default, 0.5 cores
    FakeLoad.calls = 0

    def set_readings(*values: float) -> None:
        FakeLoad.readings = list(values)
        FakeLoad.calls = 0

    return set_readings


def _backend(**cfg):
    from hwnas_backends.onnx_export import GraphIO

    class Quick(base.Backend):
        NAME = "quick"

        def prepare(self, module, io, workdir):
            pass

        def load_past(self, past):
            pass

        def step(self, x):
            pass

    be = Quick(base.BackendConfig(warmup=0, repeats=4, min_time_s=0, min_sample_ms=0, cv_threshold=10.0,
                                  load_wait_s=0.0, **cfg))
    be.io = GraphIO("hidden", 4, 0, 0, 1, 1)
    return be


def test_busy_window_is_measured_again_then_kept_when_quiet(fake_load):
    fake_load(1.0, 0.02)  # a hog during the first window only
    m = _backend().prefill(2)
    assert not m.flagged and m.attempts == 2 and m.load == 0.02


def test_busy_through_every_retry_is_flagged_as_load(fake_load):
    fake_load(1.0)
    m = _backend(load_retries=2).prefill(2)
    assert m.flagged and m.flag_reason == "load" and m.attempts == 3  # bounded: 1 + load_retries
    fake_load(1.0)
    m = _backend(max_load=2.0).prefill(2)  # the user accepts a busier machine
    assert not m.flagged and m.attempts == 1


def test_bench_refuses_figures_timed_under_load(fake_load, tiny_model_dir, capsys):
    fake_load(1.0)
    argv = ["bench", "--model", str(tiny_model_dir), "--backend", "torch", "--prefill", "4", "--decode", "2",
            "--in-process", "--option", "load_wait_s=0", "--option", "repeats=3", "--option", "min_time_s=0"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "other processes used 1.00 CPU cores" in err[0] and "max_load=0.5" in err[0]
    assert main(argv + ["--option", "max_load=4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prefill_ms"] > 0


def test_profile_under_load_is_kept_incomplete_and_resume_remeasures_only_those_rows(fake_load, tiny_model_dir,
                                                                                    tmp_path):
    space = SearchSpace.default_for(num_layers=4, intermediate_size=256)
    grid = OperatorGrid(prefill_tokens=[4], decode_contexts=[8], mlp_widths=[64, 256])
    out = tmp_path / "prof"
    # windows: 3 quiet rows' worth, then busy for good
    fake_load(*([0.0] * 3), 1.0)
    with pytest.raises(HwnasUserError, match="rows were timed while other processes used"):
        run_profile(str(tiny_model_dir), space, "torch", out, grid=grid, config=FAST, isolate=False)
    prof = DeviceProfile.load(out)
    assert not prof.header["complete"] and len(prof.rows) == grid.size()
    busy = [r for r in prof.rows if r["flagged"] and r["load"] > 0.5]
    quiet = {(r["op"], r["width"], r["phase"]): r["median_ms"] for r in prof.rows if r not in busy}
    assert len(busy) == grid.size() - 3 and len(quiet) == 3
    fake_load(0.0)
    again = run_profile(str(tiny_model_dir), space, "torch", out, grid=grid, config=FAST, isolate=False)
    assert again.header["complete"] and len(again.rows) == grid.size()
    assert FakeLoad.calls == len(busy)  # only the busy rows were timed again
    assert all(r["load"] == 0.0 for r in again.rows)
    assert all(quiet[(r["op"], r["width"], r["phase"])] == r["median_ms"] for r in again.rows
               if (r["op"], r["width"], r["phase"]) in quiet)

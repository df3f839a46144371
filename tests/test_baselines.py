"""`hwnas baselines`: every recipe exported, scored through its runtime and measured in rounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")


def _hwnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwnas.cli", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


def test_baselines_end_to_end_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bl"
    res = _hwnas("baselines", "--model", str(tiny_model_dir), "--backend", "onnxruntime", "--out", str(out),
                 "--formats", "onnx", "--widths", "128", "--drop", "1", "--rounds", "2",
                 "--ppl-windows", "1", "--ppl-window", "24", "--prefill", "8", "--decode", "4", "--repeats", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "baselines.json").read_text())
    assert not result["partial"]
    names = sorted((p["name"], p["format"]) for p in result["points"] if p["kind"] != "twin")
    assert names == [("base", "onnx"), ("drop-1", "onnx"), ("width-128", "onnx")]
    # the run's noise floor: the recipe to beat measured a second time per round, as its own point
    twin = [p for p in result["points"] if p["kind"] == "twin"]
    assert len(twin) == 1 and twin[0]["name"] == "base" and len(twin[0]["decode_ms"]) == 2
    assert result["noise_margin"] >= 0 and "noise twin" in res.stdout and "±" in res.stdout
    by = {(p["name"], p["format"]): p for p in result["points"] if p["kind"] != "twin"}
    base = by[("base", "onnx")]
    assert base["decode_speedup"]["median"] == 1.0  # the reference of every round
    for p in result["points"]:
        assert len(p["decode_ms"]) == len(p["prefill_ms"]) == 2 and min(p["decode_ms"]) > 0
        assert p["ppl"] > 1 and p["ppl_torch"] > 1
        assert (Path(p["folder"]) / "manifest.json").is_file()
    # fp32 ONNX reproduces torch; the layer-dropped and narrower points are different models
    assert by[("base", "onnx")]["ppl"] == pytest.approx(base["ppl_torch"], rel=1e-3)
    assert by[("width-128", "onnx")]["ppl_torch"] != pytest.approx(base["ppl_torch"], rel=1e-6)
    assert len(by[("drop-1", "onnx")]["subnet"]["layers"]) == 3
    assert "| base | onnx |" in res.stdout and (out / "baselines.md").read_text() == res.stdout

    # a searched artifact joins the rounds: re-running reuses every export and score
    art = tmp_path / "art"
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps({"layers": [0, 1, 3], "mlp_widths": [256, 64, 128]}))
    r = _hwnas("export", "--model", str(tiny_model_dir), "--subnet", str(sub), "--format", "onnx",
               "--out", str(art), "--no-measure")
    assert r.returncode == 0, r.stderr[-2000:]
    res2 = _hwnas("baselines", "--model", str(tiny_model_dir), "--backend", "onnxruntime", "--out", str(out),
                  "--formats", "onnx", "--widths", "128", "--drop", "1", "--rounds", "1",
                  "--ppl-windows", "1", "--ppl-window", "24", "--prefill", "8", "--decode", "4", "--repeats", "3",
                  "--compare", str(art), "--json")
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert "exporting" not in res2.stderr  # all three reused
    got = json.loads(res2.stdout)
    cmp = [p for p in got["points"] if p["kind"] == "compare"]
    assert len(cmp) == 1 and cmp[0]["format"] == "onnx" and cmp[0]["ppl"] > 1
    verdict = [line for line in (out / "baselines.md").read_text().splitlines() if line.startswith("- art (onnx")]
    assert len(verdict) == 1 and "baseline" in verdict[0]
    for p in got["points"]:  # dominance is consistent both ways
        for other in p["dominated_by"]:
            o = next(q for q in got["points"] if f"{q['name']} {q['format']}" == other)
            assert f"{p['name']} {p['format']}" in o["dominates"]


def test_baselines_refuses_bad_input_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    cases = [
        (["--backend", "onnxruntime", "--out", str(user)], "refusing"),
        (["--backend", "onnxruntime", "--out", str(tmp_path / "a"), "--formats", "openvino"], "not an installed"),
        (["--backend", "onnxruntime", "--out", str(tmp_path / "b"), "--compare", str(user)], "not an artifact"),
        (["--backend", "onnxruntime", "--out", str(tmp_path / "c"), "--widths", "0"], "widths"),
    ]
    for extra, needle in cases:
        r = _hwnas("baselines", "--model", str(tiny_model_dir), *extra)
        assert r.returncode == 2, (extra, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (extra, r.stderr)
    assert (user / "notes.txt").read_text() == "keep" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_compared_copy_of_a_baseline_is_named_as_such_and_noise_is_not_a_win():
    """The demo's search shipped base int8, byte for byte the `base onnx-int8` baseline, and three
    interleaved rounds measured it 1.07-1.10x faster: the verdict names the identity instead, and a
    ratio inside the twin's noise is not "faster"."""
    from hwnas.baselines import verdicts

    def point(name, kind, ppl, dec, files):
        return {"name": name, "kind": kind, "format": "onnx-int8", "ppl": ppl, "decode_ms": dec,
                "runtime_files": files, "dominated_by": []}

    base = point("base", "base", 82.7, [24.1, 24.3, 24.2], "aaa")
    same = point("art", "compare", 82.7, [22.5, 22.6, 21.9], "aaa")
    close = point("art2", "compare", 82.7, [23.0, 23.1, 22.9], "bbb")
    lines = verdicts({"points": [base, same, close], "noise_margin": 0.08})
    assert "the same artifact as the baseline base onnx-int8" in lines[0] and "is noise" in lines[0]
    assert "within the noise of it" in lines[1]
    assert "faster than it" in verdicts({"points": [base, close], "noise_margin": 0.02})[0]

"""Users' files are sacred: every command that writes a folder refuses one hwnas did not write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hwnas.cli import main
from hwnas.errors import HwnasUserError
from hwnas.fileio import append_jsonl, read_jsonl
from hwnas.outdir import (
    LOCK,
    MARKER,
    OutputFolderError,
    check_out,
    claim_dir,
    exclusive,
    folder_kind,
    replace_dir,
)

SUBNET = {"layers": [0, 2, 3], "mlp_widths": [256, 128, 192]}


def _user_folder(tmp_path: Path, name: str = "userdir") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "notes.txt").write_text("my notes\n")
    return d


def _listing(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --- the rule itself ----------------------------------------------------------------------------


def test_check_out_rules(tmp_path, monkeypatch):
    assert check_out(tmp_path / "new", "export") == tmp_path / "new"  # absent: fine
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", "export")
    user = _user_folder(tmp_path)
    with pytest.raises(OutputFolderError, match="not empty and was not written by hwnas"):
        check_out(user, "export")
    marked = claim_dir(tmp_path / "prof", "profile")
    assert folder_kind(marked) == "profile"
    (marked / "lut.csv").write_text("x\n")
    check_out(marked, "profile")
    with pytest.raises(OutputFolderError, match="holds hwnas profile output, not export"):
        check_out(marked, "export")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputFolderError, match="not a folder"):
        check_out(tmp_path / "afile", "subnet")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(OutputFolderError, match="symbolic link"):
        check_out(tmp_path / "link", "subnet")
    monkeypatch.chdir(marked)  # even a folder hwnas wrote is not replaced while the user stands in it
    with pytest.raises(OutputFolderError, match="current folder"):
        check_out(".", "profile")
    with pytest.raises(OutputFolderError, match="current folder"):
        check_out(tmp_path, "profile")
    # a corrupt marker is no marker
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MARKER).write_text("{not json")
    with pytest.raises(OutputFolderError):
        check_out(tmp_path / "bad", "subnet")
    # legacy: names for resumable folders, a predicate for replaced ones
    old = _user_folder(tmp_path, "old-profile")
    (old / "profile.yaml").write_text("version: 1\n")
    check_out(old, "profile", legacy=("profile.yaml",))
    with pytest.raises(OutputFolderError):
        check_out(old, "export", legacy=lambda p: False)


def test_replace_dir_swaps_only_on_success(tmp_path):
    out = tmp_path / "art"
    with replace_dir(out, "export") as tmp:
        (tmp / "a.txt").write_text("one")
    assert folder_kind(out) == "export" and (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), replace_dir(out, "export") as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("export failed half-way")
    assert (out / "a.txt").read_text() == "one"  # the old artifact is untouched
    with replace_dir(out, "export") as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary sibling left


def test_stale_temp_of_a_killed_process_is_swept(tmp_path):
    out = tmp_path / "art"
    code = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
            "from hwnas.outdir import replace_dir\n"
            f"with replace_dir({str(out)!r}, 'export') as tmp:\n"
            "    (tmp / 'half.bin').write_bytes(b'x' * 10)\n"
            "    os._exit(9)  # dies like kill -9: no cleanup runs\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".art.hwnas-tmp-")]
    assert len(stale) == 1 and not out.exists()
    user_lookalike = tmp_path / ".art.hwnas-tmp-1-mine"  # same name shape, but not marked: kept
    user_lookalike.mkdir()
    with replace_dir(out, "export") as tmp:
        (tmp / "ok").write_text("1")
    assert not stale[0].exists() and user_lookalike.is_dir() and (out / "ok").is_file()


def test_exclusive_refuses_a_second_holder(tmp_path):
    run = claim_dir(tmp_path / "run", "search")
    with exclusive(run, "search"):
        with pytest.raises(OutputFolderError, match="in use by another hwnas search"):
            with exclusive(run, "search"):
                pass
    with exclusive(run, "search"):  # released on exit
        pass
    fresh = tmp_path / "fresh"
    with pytest.raises(HwnasUserError), exclusive(fresh, "search"):
        raise HwnasUserError("bad input")
    assert not fresh.exists()  # a folder it created and nobody used is removed again
    (run / LOCK).unlink()


def test_second_search_on_one_run_folder_refuses(tmp_path, capsys):
    """Two processes: the lock holder is a real other process, as with two `hwnas search --resume`."""
    run = claim_dir(tmp_path / "run", "search")
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
            "from hwnas.outdir import exclusive\n"
            f"with exclusive({str(run)!r}, 'search'):\n"
            "    print('locked', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({"model": "nonexistent-model-folder", "tasks": ["wikitext2"],
                                       "objectives": [{"metric": "wikitext2.ppl"}, {"metric": "params"}]}))
        (run / "evaluations.jsonl").write_text("")
        assert main(["search", "--config", str(cfg), "--run-dir", str(run), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another hwnas search (process {holder.pid})" in err[0], err
    finally:
        holder.kill()
        holder.wait()


# --- every command that writes a folder keeps a user's file -------------------------------------


def _cases(tmp_path: Path, model: Path) -> dict[str, list[str]]:
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps(SUBNET))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(model), "tasks": ["wikitext2"],
                                   "objectives": [{"metric": "wikitext2.ppl"}, {"metric": "params"}]}))
    return {
        "subnet": ["subnet", "--model", str(model), "--subnet", str(sub), "--channel-order", "none", "--out", "{out}"],
        "export": ["export", "--model", str(model), "--subnet", str(sub), "--channel-order", "none",
                   "--format", "hf", "--no-measure", "--out", "{out}"],
        "profile": ["profile", "--model", str(model), "--backend", "torch", "--out", "{out}"],
        "latency fit": ["latency", "fit", "--profile", str(tmp_path / "no-profile"), "--model", str(model),
                        "--out", "{out}"],
        "finetune": ["finetune", "--model", str(model), "--channel-order", "none", "--steps", "1", "--out", "{out}"],
        "search": ["search", "--config", str(cfg), "--run-dir", "{out}"],
        "demo": ["demo", "--model", str(model), "--out", "{out}"],
    }


@pytest.mark.parametrize("command", ["subnet", "export", "profile", "latency fit", "finetune", "search", "demo"])
def test_user_folder_survives(command, tmp_path, tiny_model_dir, capsys):
    user = _user_folder(tmp_path)
    before = _listing(user)
    argv = [a.replace("{out}", str(user)) for a in _cases(tmp_path, tiny_model_dir)[command]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to write into" in err[0] and str(user) in err[0], err
    assert _listing(user) == before  # nothing deleted, nothing added
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".userdir")) == []


def test_current_folder_is_refused(tmp_path, tiny_model_dir, capsys, monkeypatch):
    work = _user_folder(tmp_path, "work")
    monkeypatch.chdir(work)
    sub = work / "s.json"
    sub.write_text(json.dumps(SUBNET))
    before = _listing(work)
    assert main(["subnet", "--model", str(tiny_model_dir), "--subnet", "s.json", "--channel-order", "none",
                 "--out", "."]) == 2
    assert _listing(work) == before
    assert "refusing" in capsys.readouterr().err


def test_subnet_replaces_its_own_folder_and_keeps_temp_out(tmp_path, tiny_model_dir, capsys):
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps(SUBNET))
    out = tmp_path / "sub"
    argv = ["subnet", "--model", str(tiny_model_dir), "--subnet", str(sub), "--channel-order", "none",
            "--out", str(out)]
    assert main(argv) == 0 and folder_kind(out) == "subnet"
    first = (out / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0  # its own output: replaced
    assert (out / "model.safetensors").stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "sub", "tiny-model"]
    exported = tmp_path / "art"
    assert main(["export", "--model", str(tiny_model_dir), "--subnet", str(sub), "--channel-order", "none",
                 "--format", "hf", "--no-measure", "--out", str(exported)]) == 0
    assert folder_kind(exported) == "export"
    # an artifact folder is not a sub-network folder
    assert main(argv[:-1] + [str(exported)]) == 2
    assert "holds hwnas export output" in capsys.readouterr().err


# --- JSONL stores survive a writer killed mid-line ------------------------------------------------


def test_append_after_a_cut_line_does_not_fuse(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    append_jsonl(path, {"i": 1})
    with open(path, "a") as f:
        f.write('{"i": 2, "cut')  # a kill mid-write
    assert read_jsonl(path) == [{"i": 1}]
    append_jsonl(path, {"i": 3})
    assert read_jsonl(path) == [{"i": 1}, {"i": 3}]
    assert path.read_text().count("\n") == 2
    whole_cut = tmp_path / "x.jsonl"
    whole_cut.write_text('{"only": "par')
    append_jsonl(whole_cut, {"a": 1})
    assert read_jsonl(whole_cut) == [{"a": 1}]


def test_unmarked_old_artifact_is_replaced_only_if_its_manifest_lists_everything(tmp_path):
    from hwnas.export import MANIFEST, is_unmarked_artifact

    old = tmp_path / "old"
    old.mkdir()
    (old / "graph.onnx").write_bytes(b"x")
    (old / MANIFEST).write_text(json.dumps({"format": "onnx", "files": {"graph.onnx": "0" * 64}}))
    assert is_unmarked_artifact(old)
    (old / "notes.txt").write_text("mine")
    assert not is_unmarked_artifact(old)
    assert not os.path.exists(old / MARKER)

"""Atomic writes: every file hwnas writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of an append-only JSONL file hwnas writes (evaluations, samples, measurements,
    loss logs). A line cut short by a kill mid-write, or anything that is not a JSON object, is
    skipped: that record is redone by whoever resumes. A missing file reads as no records."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def append_jsonl(path: str | os.PathLike[str], rec: dict[str, Any]) -> None:
    """Append one record as one line. A partial last line left by a killed writer is cut off first,
    so the new record never fuses with it; the line is flushed and fsynced before returning."""
    path = Path(path)
    line = (json.dumps(rec, separators=(",", ":")) + "\n").encode("utf-8")
    with open(path, "ab+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(max(0, size - (1 << 20)))
                tail = f.read()
                cut = tail.rfind(b"\n")
                f.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))
        f.seek(0, os.SEEK_END)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: str | os.PathLike[str], keep: Any) -> list[dict[str, Any]]:
    """Atomically rewrite a JSONL file with only the records for which `keep(rec)` is true
    (a resumed job drops what it logged after its last checkpoint); returns them."""
    recs = [r for r in read_jsonl(path) if keep(r)]
    write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in recs))
    return recs


def read_yaml_file(path: Path, what: str, error: type[Exception]) -> Any:
    """A user's YAML file through `yaml.safe_load` (no tags that build Python objects); anything
    unreadable is an `error` with one line of text."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{what} not found: {path}") from exc
    except IsADirectoryError as exc:
        raise error(f"{path} is a folder; give a {what}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a text file (not UTF-8); give a YAML {what}") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from exc
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{path}: not valid YAML ({first})") from exc
    except RecursionError as exc:
        raise error(f"{path}: nested too deeply to be a {what}") from exc

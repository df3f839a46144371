"""Output folders: hwnas replaces or resumes only folders it wrote itself.

Every folder a command writes (`--out`, `--run-dir`) carries a marker file, `.hwnas-folder.json`,
naming the kind of folder (`subnet`, `export`, `profile`, `latency-model`, `finetune`, `search`,
`demo`). A folder may be written into only when it does not exist, is empty, or carries the marker
of the same kind (folders written by hwnas before the marker existed are recognised by the files
they hold: `legacy`). Anything else -- a user's folder, the current folder, a folder of another
kind -- is refused with a one-line `OutputFolderError` before any work is done.

Two ways to write:
- `replace_dir(path, kind)`: build the whole folder in a fresh temporary sibling and swap it in at
  the end (subnet, export). A crash leaves the old folder untouched and a temporary sibling that
  the next run of the same kind sweeps away (it carries the marker `.hwnas-tmp`).
- `claim_dir(path, kind)`: a resumable folder (profile, latency fit, finetune, search, demo): it is
  created or adopted and marked; its files are written atomically one by one.

`exclusive(path)` holds an advisory lock (flock) on a folder for the life of a command: a second
command on the same folder refuses instead of interleaving its writes. The kernel drops the lock
when the process dies, so a `kill -9` never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import HwnasUserError

MARKER = ".hwnas-folder.json"
TMP_MARKER = ".hwnas-tmp"
LOCK = ".hwnas-lock"
KINDS = ("subnet", "export", "profile", "latency-model", "finetune", "search", "demo", "recover", "baselines", "prune")


class OutputFolderError(HwnasUserError):
    """An output folder exists and was not written by hwnas as this kind of folder."""


def folder_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind named by the folder's marker, or None (no marker, or one hwnas cannot read)."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _protected(path: Path) -> str | None:
    """Why `path` may never be replaced or adopted whatever it holds (None: it may)."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "it is the current folder or one of its parents"
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        return "it is the home or root folder"
    return None


Legacy = Iterable[str] | Callable[[Path], bool]


def check_out(path: str | os.PathLike[str], kind: str, *, legacy: Legacy = ()) -> Path:
    """Raise `OutputFolderError` unless hwnas may write a folder of `kind` at `path`.

    Allowed: `path` does not exist; it is an empty folder; it is a folder with hwnas's marker of
    the same kind; it has no marker but was written by an earlier hwnas as that kind: `legacy` is
    either file names (any one present: for resumable folders, whose loaders check the contents
    and which are never deleted) or a predicate that proves it (for folders that get replaced).
    Call it before expensive work so a refusal costs nothing."""
    assert kind in KINDS, kind
    path = Path(path)
    if path.is_symlink():
        raise OutputFolderError(f"refusing to write into {path}: it is a symbolic link; give a real folder")
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputFolderError(f"refusing to write {path}: it exists and is not a folder")
    why = _protected(path)
    if why:
        raise OutputFolderError(f"refusing to write into {path}: {why}; give a new or empty folder")
    found = folder_kind(path)
    if found == kind:
        return path
    if found is not None:
        raise OutputFolderError(f"refusing to write into {path}: it holds hwnas {found} output, not {kind}; "
                                "give another folder")
    names = {p.name for p in path.iterdir()} - {LOCK}
    if not names:
        return path
    if callable(legacy):
        if legacy(path):
            return path
    elif names & set(legacy):
        return path
    raise OutputFolderError(f"refusing to write into {path}: it is not empty and was not written by hwnas "
                            f"{kind}; give a new or empty folder")


def _marker(kind: str) -> dict:
    from . import __version__

    return {"version": 1, "kind": kind, "hwnas": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_marker(folder: Path, kind: str) -> None:
    from .fileio import write_json

    if folder_kind(folder) != kind:
        write_json(folder / MARKER, _marker(kind))


def claim_dir(path: str | os.PathLike[str], kind: str, *, legacy: Legacy = ()) -> Path:
    """Create or adopt a resumable output folder of `kind` (see `check_out`) and mark it."""
    path = check_out(path, kind, legacy=legacy)
    path.mkdir(parents=True, exist_ok=True)
    write_marker(path, kind)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(path: Path) -> None:
    """Remove temporary siblings of `path` left by a killed hwnas process (marked, owner dead)."""
    prefix = f".{path.name}.hwnas-tmp-"
    with contextlib.suppress(OSError):
        for sib in path.parent.iterdir():
            if not sib.name.startswith(prefix) or not (sib / TMP_MARKER).is_file():
                continue
            try:
                pid = int(sib.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(sib, ignore_errors=True)


def temp_sibling(path: Path) -> Path:
    """A new, marked temporary folder beside `path` (swept later if its process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.hwnas-tmp-{os.getpid()}-", dir=path.parent))
    (tmp / TMP_MARKER).write_text(f"{os.getpid()}\n")
    return tmp


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike[str], kind: str, *, legacy: Legacy = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder; when the block succeeds it becomes `path` (marked `kind`).

    The old folder (allowed by `check_out`) is moved aside first and removed only after the new
    one is in place; on failure the temporary folder is removed and `path` is left as it was."""
    path = Path(path)
    check_out(path, kind, legacy=legacy)
    _sweep_stale(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        (tmp / TMP_MARKER).unlink()
        write_marker(tmp, kind)
        check_out(path, kind, legacy=legacy)  # still ours (nobody put files there meanwhile)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.hwnas-old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], what: str = "command") -> Iterator[None]:
    """Hold an advisory lock on folder `path` (created if needed); refuse if another process has it.
    A folder it created that holds nothing but the lock when the block ends is removed again (a
    command that failed on bad input leaves nothing behind)."""
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputFolderError(f"{path} is in use by another hwnas {what} "
                                        f"(process {_lock_owner(fd)}); wait for it or use another folder") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        if created and {p.name for p in path.iterdir()} == {LOCK}:
            with contextlib.suppress(OSError):
                (path / LOCK).unlink()
                path.rmdir()
        os.close(fd)


def _lock_owner(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode().strip()))
    return "unknown"


def remove_own(path: str | os.PathLike[str], kind: str, *, legacy: Legacy = ()) -> None:
    """Delete a folder of `kind` that hwnas wrote (tools start their runs afresh with it); refuse
    anything `check_out` refuses. A missing folder is fine."""
    path = check_out(path, kind, legacy=legacy)
    if path.exists():
        shutil.rmtree(path)

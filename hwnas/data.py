"""Where evaluation and calibration data live: `--data DIR`, else $HWNAS_DATA, else a `shared/data`
folder beside the current directory or beside the hwnas checkout. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataNotFoundError


def candidate_dirs(explicit: str | Path | None = None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    out: list[Path] = []
    env = os.environ.get("HWNAS_DATA")
    if env:
        out.append(Path(env).expanduser())
    out.append(Path.cwd().parent / "shared" / "data")
    out.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return out


def find_data_file(relative: str, data_dir: str | Path | None = None) -> Path:
    """The path of `relative` in the first data folder that has it, or a clear error."""
    tried = candidate_dirs(data_dir)
    for folder in tried:
        path = folder / relative
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in tried)
    raise DataNotFoundError(
        f"data file '{relative}' not found (looked in: {where}); pass --data DIR or set HWNAS_DATA "
        f"to a folder laid out as ../shared/data (see its MANIFEST.md)"
    )

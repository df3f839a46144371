"""Where evaluation and calibration data live: `--data DIR`, else $HWNAS_DATA, else a `shared/data`
folder beside the current directory or beside the hwnas checkout. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DataNotFoundError

ALPACA = "alpaca/alpaca_5000.json"
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n{output}"
)


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


def alpaca_texts(path: Path) -> list[str]:
    """One text per record of an Alpaca-format JSON file (instruction, optional input, output), in the
    Stanford Alpaca prompt template: what fine-tuning trains on and importance calibrates on."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for r in rows:
        has_input = bool(r.get("input"))
        out.append(ALPACA_TEMPLATE.format(
            ctx=", paired with an input that provides further context" if has_input else "",
            instruction=r["instruction"], input=f"### Input:\n{r['input']}\n\n" if has_input else "",
            output=r["output"]))
    return out

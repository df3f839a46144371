"""The results store of a search run: `evaluations.jsonl`, append-only, one named-field record per
real evaluation (`docs/formats.md`), so a killed search resumes losing at most the evaluation in
flight; and `metric_value`, the one way a record's metric is read (real, exact, predicted or measured)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import append_jsonl, read_jsonl
from ..subnet import Subnet

STORE_VERSION = 1
STORE_FILE = "evaluations.jsonl"


class ResultsStore:
    """Append-only JSONL of real evaluations, one named-field record per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.keys: set[str] = set()
        for rec in read_jsonl(self.path):  # a line cut by a kill mid-write is skipped and redone
            self._add(rec)

    def _add(self, rec: dict[str, Any]) -> None:
        key = Subnet.from_dict(rec.get("subnet"), source=f"{self.path}: record").key()
        if key not in self.keys:
            self.keys.add(key)
            self.records.append(rec)

    def __contains__(self, s: Subnet) -> bool:
        return s.key() in self.keys

    def __len__(self) -> int:
        return len(self.records)

    def append(self, rec: dict[str, Any]) -> None:
        append_jsonl(self.path, rec)
        self._add(rec)

    def subnets(self) -> list[Subnet]:
        return [Subnet.from_dict(r["subnet"]) for r in self.records]

    def values(self, metric: str) -> np.ndarray:
        return record_values(self.records, [metric])[metric]


def metric_value(rec: dict[str, Any], metric: str) -> float:
    if metric.startswith("measured."):  # e.g. measured.decode_ms_per_token (KeyError/TypeError if not measured)
        return float(rec["latency_measured"][metric.split(".", 1)[1]])
    if metric in rec.get("costs", {}):
        return float(rec["costs"][metric])
    if metric in rec.get("latency_predicted", {}) and rec["latency_predicted"][metric] is not None:
        return float(rec["latency_predicted"][metric])
    task, _, name = metric.rpartition(".")  # task names may hold dots (text:PATH); metric names do not
    return float(rec["metrics"][task][name])


def record_values(records: list[dict[str, Any]], metrics: Iterable[str]) -> dict[str, np.ndarray]:
    """Metric -> its values over `records`."""
    return {m: np.asarray([metric_value(r, m) for r in records], dtype=float) for m in metrics}

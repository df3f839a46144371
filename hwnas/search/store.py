"""The results store of a search run: `evaluations.jsonl`, append-only, one named-field record per
real evaluation (`docs/formats.md`), so a killed search resumes losing at most the evaluation in
flight; `EvalRecord`, one line of it typed; and `metric_value`, the one way a record's metric is read
(real, exact, predicted or measured)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import append_jsonl, read_jsonl
from ..subnet import Subnet

STORE_VERSION = 1
STORE_FILE = "evaluations.jsonl"


@dataclass
class EvalRecord:
    """One line of `evaluations.jsonl` (`docs/formats.md`, "Search run"). `from_dict` reads every line
    hwnas wrote (a field an older file lacks takes its default); `to_dict` gives the documented JSON
    object, its fields in the order below, then any keys this version does not know (`extra`)."""

    version: int = STORE_VERSION
    run_id: str | None = None
    index: int = 0
    round: int = 0
    is_base: bool = False
    subnet: dict[str, Any] = field(default_factory=dict)  # `Subnet.to_dict()`
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> every score the evaluator gave
    costs: dict[str, Any] = field(default_factory=dict)
    latency_predicted: dict[str, float] = field(default_factory=dict)
    latency_measured: dict[str, float] | None = None
    predicted: dict[str, float] = field(default_factory=dict)
    device_profile: Any = None  # a profile id, or device name -> id with several latency models
    seeds: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    timestamp: str | None = None
    eval_seconds: float | None = None
    cached: bool = False
    dtype: str = "fp32"  # what torch evaluated the sub-network in (records from before dtypes: fp32)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, source: str = "record") -> EvalRecord:
        """A record as read from the file; its sub-network must be one (`SubnetError` naming `source`)."""
        Subnet.from_dict(data.get("subnet") if isinstance(data, dict) else None, source=source)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    def key(self) -> str:
        return Subnet.from_dict(self.subnet).key()


class ResultsStore:
    """Append-only JSONL of real evaluations, one named-field record per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self.keys: set[str] = set()
        for rec in read_jsonl(self.path):  # a line cut by a kill mid-write is skipped and redone
            self._add(rec)

    def _add(self, rec: dict[str, Any]) -> None:
        key = EvalRecord.from_dict(rec, source=f"{self.path}: record").key()
        if key not in self.keys:
            self.keys.add(key)
            self.records.append(rec)

    def __contains__(self, s: Subnet) -> bool:
        return s.key() in self.keys

    def __len__(self) -> int:
        return len(self.records)

    def append(self, rec: EvalRecord | dict[str, Any]) -> dict[str, Any]:
        """Write one record (flushed) and keep it; returns it as the JSON object stored."""
        if isinstance(rec, EvalRecord):
            rec = rec.to_dict()
        append_jsonl(self.path, rec)
        self._add(rec)
        return rec

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

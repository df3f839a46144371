"""Whole sub-network benchmark: prefill T tokens, then decode D tokens with the KV cache.

`bench_subnet` runs in a fresh worker process by default (the latency model calls it to measure
training samples); `BenchResult.summary()` is exactly what `hwnas bench --json` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SUMMARY_KEYS = ("backend", "prefill_ms", "decode_ms_per_token", "peak_mem_mb", "repeats", "cv_prefill",
                "cv_decode", "device")


@dataclass
class BenchResult:
    """Medians over repeats. decode_ms_per_token: a repeat decodes `decode_tokens` tokens after a
    cache of `prefill_tokens` (static-shape runtimes: at that fixed context) and counts per token."""

    backend: str
    prefill_ms: float
    decode_ms_per_token: float
    peak_mem_mb: float
    repeats: int
    cv_prefill: float
    cv_decode: float
    device: str
    prefill_p90_ms: float = 0.0
    decode_p90_ms: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    batch: int = 1
    threads: int = 1
    load: float = 0.0  # other processes' CPU use during timing, in cores
    flagged: bool = False
    flag_reason: str = ""  # "load": other processes were busy through every retry (see BackendConfig.max_load)
    subnet: dict[str, list[int]] | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON object `hwnas bench --json` prints."""
        d = asdict(self)
        return {k: d[k] for k in SUMMARY_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """A result from a record that holds `to_dict`'s fields (a latency sample: other keys ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def bench_subnet(model: str, subnet: dict[str, list[int]] | None, backend: str, *, prefill: int = 128,
                 decode: int = 32, batch: int = 1, threads: int = 1, config: dict[str, Any] | None = None,
                 isolate: bool = True, loaded: Any = None) -> BenchResult:
    """Measure one sub-network (None: the full model) on one backend.

    `model` is an hwnas model spec; with `isolate=False` the measurement runs in this process and
    may reuse `loaded` (a LoadedModel) instead of loading the model again."""
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_isolated, run_tasks

    cfg = {**(config or {}), "threads": threads}
    spec = GraphSpec("model", model, subnet=subnet)
    tasks = [Task("prefill", tokens=prefill, batch=batch), Task("decode", context=prefill, batch=batch, steps=decode)]
    res = run_isolated(backend, cfg, spec, tasks) if isolate else run_tasks(backend, cfg, spec, tasks, loaded=loaded)
    p, d = res.measurements
    return BenchResult(
        backend=backend, prefill_ms=round(p.median_ms, 3), decode_ms_per_token=round(d.median_ms, 3),
        peak_mem_mb=round(max(p.peak_mem_mb, d.peak_mem_mb), 1), repeats=min(p.repeats, d.repeats),
        cv_prefill=round(p.cv, 4), cv_decode=round(d.cv, 4), device=res.device,
        prefill_p90_ms=round(p.p90_ms, 3), decode_p90_ms=round(d.p90_ms, 3), prefill_tokens=prefill,
        decode_tokens=decode, batch=batch, threads=threads, load=round(max(p.load, d.load), 3),
        flagged=p.flagged or d.flagged, flag_reason=_reason(p, d), subnet=subnet, versions=res.versions)


def _reason(*ms: Any) -> str:
    from hwnas.measure.backend import LOAD_REASON

    reasons = {m.flag_reason for m in ms if m.flagged}
    return LOAD_REASON if LOAD_REASON in reasons else ("noisy" if reasons else "")


def refuse_loaded(what: str, load: float, max_load: float) -> None:
    """The one refusal for figures timed while other processes were busy (never stored silently)."""
    from .errors import HwnasUserError

    raise HwnasUserError(
        f"{what} was timed while other processes used {load:.2f} CPU cores (more than max_load={max_load}), "
        "through every retry: the figures would be skewed, so they are not used. Stop the other work "
        "(or pin it away with taskset) and run again; --option max_load=N accepts a busier machine")

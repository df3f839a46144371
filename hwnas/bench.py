"""Whole sub-network benchmark: prefill T tokens, then decode D tokens with the KV cache.

`bench_subnet` runs in a fresh worker process by default (the latency model calls it to measure
training samples); `BenchResult.summary()` is exactly what `hwnas bench --json` prints.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)

SUMMARY_KEYS = ("backend", "prefill_ms", "decode_ms_per_token", "peak_mem_mb", "repeats", "cv_prefill",
                "cv_decode", "device")  # the object an earlier issue fixed; `dtype` etc. are in to_dict()


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
    prefill_min_ms: float = 0.0  # fastest and 10th-percentile repeat (0.0 in records from before they were kept)
    prefill_p10_ms: float = 0.0
    decode_min_ms: float = 0.0
    decode_p10_ms: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    batch: int = 1
    threads: int = 1
    load: float = 0.0  # other processes' CPU use during timing, in cores
    flagged: bool = False
    flag_reason: str = ""  # "load": other processes were busy through every retry (see BackendConfig.max_load)
    subnet: dict[str, list[int]] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    # the speed probe taken just before (`hwnas.measure.backend.speed_probe`; None if not taken):
    # what the latency model normalizes this measurement by
    probe: dict[str, float] | None = None
    dtype: str = "fp32"  # what torch loaded the weights in before the graph was built

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


def bench_tasks(prefill: int, decode: int, batch: int = 1) -> list:
    """What one sub-network benchmark times: a prefill of `prefill` tokens, then `decode` one-token
    steps after a cache of that length (`hwnas.measure.worker.Task`s)."""
    from hwnas.measure.worker import Task

    return [Task("prefill", tokens=prefill, batch=batch), Task("decode", context=prefill, batch=batch, steps=decode)]


def bench_subnet(model: str, subnet: dict[str, list[int]] | None, backend: str, *, prefill: int = 128,
                 decode: int = 32, batch: int = 1, threads: int = 1, config: dict[str, Any] | None = None,
                 isolate: bool = True, loaded: Any = None, probe: bool = True, dtype: str = "fp32") -> BenchResult:
    """Measure one sub-network (None: the full model) on one backend.

    `model` is an hwnas model spec; with `isolate=False` the measurement runs in this process and
    may reuse `loaded` (a LoadedModel) instead of loading the model again. `probe`: take the speed
    probe right before, on the cores the worker will use (~0.6 s). `dtype`: what torch loads the
    weights in (`hwnas.model.DTYPES`; the torch backend also computes in it)."""
    from hwnas.measure.backend import worker_speed_probe
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import run_isolated, run_tasks

    cfg = {**(config or {}), "threads": threads}
    if loaded is not None:
        dtype = loaded.dtype
    spec = GraphSpec("model", model, subnet=subnet, dtype=dtype)
    tasks = bench_tasks(prefill, decode, batch)
    speed = worker_speed_probe(backend, cfg) if probe else None
    res = run_isolated(backend, cfg, spec, tasks) if isolate else run_tasks(backend, cfg, spec, tasks, loaded=loaded)
    p, d = res.measurements
    return BenchResult(
        backend=backend, prefill_ms=round(p.median_ms, 3), decode_ms_per_token=round(d.median_ms, 3),
        peak_mem_mb=round(max(p.peak_mem_mb, d.peak_mem_mb), 1), repeats=min(p.repeats, d.repeats),
        cv_prefill=round(p.cv, 4), cv_decode=round(d.cv, 4), device=res.device,
        prefill_p90_ms=round(p.p90_ms, 3), decode_p90_ms=round(d.p90_ms, 3),
        prefill_min_ms=round(p.min_ms, 3), prefill_p10_ms=round(p.p10_ms, 3), decode_min_ms=round(d.min_ms, 3),
        decode_p10_ms=round(d.p10_ms, 3), prefill_tokens=prefill,
        decode_tokens=decode, batch=batch, threads=threads, load=round(max(p.load, d.load), 3),
        flagged=p.flagged or d.flagged, flag_reason=_reason(p, d), subnet=subnet, versions=res.versions,
        probe=speed, dtype=dtype)


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


def interleaved(items: Sequence[K], rounds: int, measure: Callable[[K, int], Any], *, seed: int = 0,
                done: Callable[[K, int], bool] | None = None,
                progress: Callable[[int, int], None] | None = None) -> None:
    """Measure every item once per round, rounds one after the other and the items of a round in a
    shuffled order (Laaber et al.: randomized interleaving on cloud machines), so the host's drift
    spreads over all items instead of biasing the ones measured during it. `measure(item, round)`
    does (and keeps) one measurement; `done(item, round)` skips what a resumed run already has.
    The one place comparisons (A/B against a base, a shortlist, baselines) take their rounds."""
    rng = random.Random(seed)
    todo = [(r, k) for r in range(rounds) for k in items if not (done and done(k, r))]
    n = 0
    for r in range(rounds):
        order = list(items)
        rng.shuffle(order)  # drawn for every round, so a resumed run keeps the original orders
        for k in order:
            if done and done(k, r):
                continue
            if progress:
                progress(n, len(todo))
            measure(k, r)
            n += 1
    if progress:
        progress(n, len(todo))


def ratio_spread(ratios: Sequence[float]) -> dict[str, float]:
    """Median and range of per-round ratios (A and B measured in the same round): how a comparison
    is reported, so a difference inside the round-to-round noise shows as a range across 1."""
    return {"median": round(statistics.median(ratios), 4), "lo": round(min(ratios), 4), "hi": round(max(ratios), 4)}

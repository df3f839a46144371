"""The metrics hwnas knows by name, declared once: what each measures, its unit, which way is better
and where its value comes from. The latency model's targets (`hwnas.latency.TARGETS`), the search's
latency and cost metrics (`hwnas.search.LATENCY_METRICS`, `COST_METRICS`), an objective's default
goal and the report's axis units are read from here.

Kinds: "measured" (timed on a device by a backend plugin; the latency model predicts it from a
device profile, so a search record holds it predicted, and `--measure-front` measured), "exact"
(computed from the architecture), "evaluated" (a real evaluation on a task). A task's scores
(`<task>.<metric>`, e.g. `wikitext2.ppl`) are named by the task, not declared here.

Adding a measured metric: declare it here; the latency model then fits and predicts it, the search
accepts it as an objective or budget (`name` and `name@device`), `--measure-front` and pick rules
read it. How it is measured is still written where the figures are made: a field of the timing
loop's `Measurement` (`hwnas.measure.backend`) if the loop must produce it, the `BenchResult` field
and its value in `hwnas.bench.bench_subnet` (latency samples and `measured.jsonl` lines are
`BenchResult`s), `hwnas.export.measure_artifact` for manifests, and the profile's CSV columns
(`hwnas.profile.VALUE_COLUMNS`, kept explicit: they are a file format) if lookup-table rows carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("measured", "predicted", "evaluated", "exact")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    goal: str  # "min" | "max": which way is better (an objective's default goal)
    kind: str  # one of KINDS
    description: str
    # measured metrics: the phase whose lookup-table entries describe it (`hwnas.latency.phase_settings`)
    phase: str = "prefill"
    # measured metrics: the sum of the profile's per-block figures estimates it (a time; not a peak)
    additive: bool = False
    # measured times: the speed probe figure (`hwnas.fingerprint.measure_roofline`) it is taken to
    # scale inversely with, so a measurement made at another machine speed is normalized to the
    # profile's (`hwnas.latency.speed_factors`); "" for what does not scale with speed
    speed: str = ""

    def __post_init__(self) -> None:
        if self.goal not in ("min", "max") or self.kind not in KINDS or self.phase not in ("prefill", "decode"):
            raise ValueError(f"metric {self.name}: goal min|max, kind one of {KINDS}, phase prefill|decode")


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Declare a metric (its name must be new)."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name} is declared twice")
    METRICS[metric.name] = metric
    return metric


register(Metric("prefill_ms", "ms", "min", "measured",
                "a prefill of the prompt from an empty cache, median over repeats", phase="prefill", additive=True,
                speed="peak_gflops"))
register(Metric("decode_ms_per_token", "ms/token", "min", "measured",
                "one decoded token with the KV cache after the prompt, median over repeats", phase="decode",
                additive=True, speed="bandwidth_gbs"))
register(Metric("peak_mem_mb", "MB", "min", "measured",
                "peak resident memory of the process while timing (CUDA: peak allocated)"))
register(Metric("params", "parameters", "min", "exact", "parameters of the sub-network"))
register(Metric("size_mb", "MB", "min", "exact", "stored weight size, each block at its weight format's bits"))


def names(kind: str) -> tuple[str, ...]:
    """The declared metrics of one kind, in declaration order."""
    return tuple(m.name for m in METRICS.values() if m.kind == kind)


def lookup(name: str) -> Metric | None:
    """The declared metric a metric name refers to: `decode_ms_per_token`, `decode_ms_per_token@ov`
    (a device of the run) and `measured.decode_ms_per_token` all name `decode_ms_per_token`."""
    if name.startswith("measured."):
        name = name.split(".", 1)[1]
    return METRICS.get(name.partition("@")[0])


def default_goal(name: str) -> str:
    """Which way is better for `name`: its declaration's goal, else "min"."""
    m = lookup(name)
    return m.goal if m else "min"

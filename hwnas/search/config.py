"""The run config of a search (`run.yaml`, `docs/formats.md`): what to optimise and under which budgets.

Objectives are named metrics: `<task>.<metric>` (real evaluation, e.g. `wikitext2.ppl`,
`arc_easy.acc_norm`), `params` / `size_mb` (exact), and `prefill_ms` / `decode_ms_per_token` /
`peak_mem_mb` (a fitted latency model for a device profile; `decode_ms_per_token@ov` with several).
Budgets constrain any of them. `RunConfig.from_dict` turns malformed YAML into one-line
`HwnasUserError`s naming the key; `LinasConfig` holds the LINAS schedule and its inner NSGA-II.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import metrics
from ..errors import HwnasUserError, is_int, is_number

COST_METRICS = metrics.names("exact")  # ("params", "size_mb"): computed from the architecture
LATENCY_METRICS = metrics.names("measured")  # ("prefill_ms", "decode_ms_per_token", "peak_mem_mb"): predicted


def latency_target(metric: str) -> tuple[str, str] | None:
    """(target, device) of a latency metric: `decode_ms_per_token` -> (.., ""), and with several
    latency models `decode_ms_per_token@ov` -> (.., "ov"); None for any other metric."""
    target, _, device = metric.partition("@")
    return (target, device) if target in LATENCY_METRICS else None


@dataclass(frozen=True)
class Objective:
    metric: str  # "<task>.<metric>" | params | size_mb | prefill_ms | decode_ms_per_token | peak_mem_mb (@device)
    goal: str | None = None  # min | max; None: the metric's declared goal (`hwnas.metrics`), else min

    def __post_init__(self) -> None:
        if self.goal is None:
            object.__setattr__(self, "goal", metrics.default_goal(self.metric))

    @property
    def kind(self) -> str:
        if self.metric in COST_METRICS:
            return "cost"
        if latency_target(self.metric):
            return "latency"
        return "accuracy"

    @property
    def sign(self) -> float:
        return 1.0 if self.goal == "min" else -1.0


@dataclass
class LinasConfig:
    initial: int = 50  # random sub-networks evaluated for real in round 0
    rounds: int = 4  # predictor-driven rounds after round 0
    per_round: int = 50  # real evaluations per round (the final NSGA-II population)
    inner_evaluations: int = 20000  # predicted evaluations per inner NSGA-II
    population: int = 100
    crossover_prob: float = 0.9
    crossover_eta: float = 15.0
    mutation_eta: float = 20.0
    seeds: bool = True  # round 0 starts with the recipes a user would try without a search (see heuristic_seeds)


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    space: str | None = None
    channel_order: str = "contrib"
    objectives: list[Objective] = field(default_factory=lambda: [Objective("wikitext2.ppl"), Objective("params")])
    budgets: dict[str, float] = field(default_factory=dict)  # metric -> upper bound (lower for goal max)
    tasks: list[str] = field(default_factory=lambda: ["wikitext2"])
    limit: int | None = 100
    ppl_windows: int = 2
    ppl_window: int = 512
    latency_model: str | dict[str, str] | None = None  # a folder, or {device name: folder} for several
    latency: dict[str, int] = field(default_factory=lambda: {"prefill": 128, "decode": 32, "batch": 1})
    linas: LinasConfig = field(default_factory=LinasConfig)
    algorithm: str = "linas"  # a name in hwnas.search.algorithms.ALGORITHMS: linas | nsga2 | random
    backend: str | None = None  # whose weight formats a compressed space simulates (default: the latency model's)
    seed: int = 0
    data: str | None = None
    run_id: str | None = None
    dtype: str = "fp32"  # what torch loads and evaluates the model in (hwnas.model.DTYPES; auto resolved per machine)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        from ..fileio import read_yaml_file

        data = read_yaml_file(Path(path), "run config", HwnasUserError)
        return cls.from_dict({} if data is None else data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<config>") -> RunConfig:
        """Build and validate a run config from parsed YAML; anything malformed is a one-line
        `HwnasUserError` naming the key."""
        if not isinstance(data, dict):
            raise HwnasUserError(f"{source}: a run config must be a YAML mapping of keys (see docs/formats.md)")
        known = set(cls.__dataclass_fields__) | {"version"}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise HwnasUserError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
        if data.get("version", 1) != 1:
            raise HwnasUserError(f"{source}: unsupported run config version {data.get('version')!r} (this hwnas reads 1)")
        data = {k: v for k, v in data.items() if k != "version"}

        def fail(key: str, want: str) -> HwnasUserError:
            return HwnasUserError(f"{source}: {key} must be {want}, got {_short(data.get(key))}")

        from ..model import DTYPES

        if "dtype" in data and data["dtype"] not in DTYPES:
            raise fail("dtype", f"one of {', '.join(DTYPES)}")
        for key in ("model", "channel_order", "algorithm"):
            if key in data and not isinstance(data[key], str):
                raise fail(key, "a string")
        for key in ("space", "data", "run_id", "backend"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise fail(key, "a string")
        if data.get("run_id") is not None and (not data["run_id"] or any(c in data["run_id"] for c in "/\\\0")
                                               or data["run_id"] in (".", "..")):
            raise fail("run_id", "a plain folder name (no path separators)")
        if "channel_order" in data and data["channel_order"] not in CHANNEL_ORDERS:
            raise fail("channel_order", f"one of {', '.join(CHANNEL_ORDERS)}")
        if "objectives" in data:
            objs = data["objectives"]
            if not isinstance(objs, list):
                raise fail("objectives", "a list of metric names or {metric, goal} mappings")
            data["objectives"] = [_objective(o, source) for o in objs]
        if "budgets" in data:
            b = data["budgets"] if data["budgets"] is not None else {}
            if not isinstance(b, dict) or not all(isinstance(k, str) and is_number(v) for k, v in b.items()):
                raise fail("budgets", "a mapping of metric names to numbers, e.g. {params: 100000000}")
            data["budgets"] = {k: float(v) for k, v in b.items()}
        if "tasks" in data:
            t = data["tasks"]
            if not isinstance(t, list) or not t or not all(isinstance(x, str) and x.strip() for x in t):
                raise fail("tasks", "a non-empty list of task names, e.g. [wikitext2, arc_easy]")
        if "limit" in data and data["limit"] is not None and not (is_int(data["limit"]) and data["limit"] > 0):
            raise fail("limit", "a positive integer (items per task) or null for all")
        if "ppl_windows" in data and not (is_int(data["ppl_windows"]) and data["ppl_windows"] >= 0):
            raise fail("ppl_windows", "an integer >= 0 (0: the whole text)")
        if "ppl_window" in data and not (is_int(data["ppl_window"]) and data["ppl_window"] > 0):
            raise fail("ppl_window", "a positive integer (tokens)")
        if "seed" in data and not is_int(data["seed"]):
            raise fail("seed", "an integer")
        lm = data.get("latency_model")
        if lm is not None and not (isinstance(lm, str) or (
                isinstance(lm, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in lm.items()))):
            raise fail("latency_model", "a folder, or a mapping of device names to folders")
        if "latency" in data:
            lat = data["latency"]
            keys = ("prefill", "decode", "batch")
            if not isinstance(lat, dict) or set(lat) - set(keys) or not all(
                    is_int(v) and v > 0 for v in lat.values()):
                raise fail("latency", "a mapping of prefill, decode and batch to positive integers")
            data["latency"] = {"prefill": 128, "decode": 32, "batch": 1, **lat}
        if "linas" in data:
            data["linas"] = _linas(data["linas"], source)
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "<config>") -> None:
        from ..evaluate.tasks import get_task
        from .algorithms import ALGORITHMS

        if len(self.objectives) < 2:
            raise HwnasUserError(f"{source}: give at least two objectives (an accuracy and a cost)")
        try:
            specs = {t: get_task(t.strip()) for t in self.tasks}
        except HwnasUserError as exc:
            raise HwnasUserError(f"{source}: {exc}") from exc
        for o in self.objectives:
            if o.goal not in ("min", "max"):
                raise HwnasUserError(f"{source}: objective {o.metric}: goal must be min or max")
            if o.kind == "accuracy" and o.metric.rpartition(".")[0] not in self.tasks:
                raise HwnasUserError(f"{source}: objective {o.metric} needs task '{o.metric.rpartition('.')[0]}' "
                                     f"in tasks {self.tasks}")
            if o.kind == "latency" and not self.latency_model:
                raise HwnasUserError(f"{source}: objective {o.metric} needs latency_model: a folder written by "
                                     "`hwnas latency fit`")
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise HwnasUserError(f"{source}: an objective is listed twice")
        devices = self.latency_sources()
        for metric in [o.metric for o in self.objectives] + list(self.budgets):
            lt = latency_target(metric)
            if lt and devices and lt[1] not in devices:
                names = ", ".join(f"{lt[0]}@{d}" if d else lt[0] for d in devices)
                raise HwnasUserError(f"{source}: {metric} names no latency model of this run; use one of {names}")
            if lt and not devices:
                raise HwnasUserError(f"{source}: {metric} needs latency_model: a folder written by `hwnas latency fit`")
            if lt or metric in COST_METRICS:
                continue
            task, _, name = metric.rpartition(".")
            if task not in specs or name not in specs[task].metrics:
                known = [*COST_METRICS, *LATENCY_METRICS, *(f"{t}.{m}" for t, sp in specs.items() for m in sp.metrics)]
                raise HwnasUserError(f"{source}: unknown metric '{metric}'; this run has {', '.join(known)}")
        if self.algorithm not in ALGORITHMS:
            *most, last = ALGORITHMS
            raise HwnasUserError(f"{source}: algorithm must be {', '.join(most)} or {last}")

    def latency_sources(self) -> dict[str, str]:
        """Device name -> latency model folder ("" for the single unnamed one)."""
        if not self.latency_model:
            return {}
        if isinstance(self.latency_model, str):
            return {"": self.latency_model}
        if not all(isinstance(k, str) and k and "@" not in k for k in self.latency_model):
            raise HwnasUserError("latency_model: name each device with a non-empty name without '@'")
        return {str(k): str(v) for k, v in self.latency_model.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objectives"] = [asdict(o) for o in self.objectives]
        return {"version": 1, **d}


CHANNEL_ORDERS = ("contrib", "act", "taylor", "none")
LINAS_INTS = {"initial": 1, "rounds": 0, "per_round": 1, "inner_evaluations": 1, "population": 2}  # key: minimum


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _objective(o: Any, source: str) -> Objective:
    if isinstance(o, str) and o:
        return Objective(o)
    if isinstance(o, dict) and isinstance(o.get("metric"), str) and o["metric"] and set(o) <= {"metric", "goal"} \
            and isinstance(o.get("goal", "min"), str):
        return Objective(**o)
    raise HwnasUserError(f"{source}: objective {_short(o)} must be a metric name or {{metric: NAME, goal: min|max}}")


def _linas(value: Any, source: str) -> LinasConfig:
    if value is None:
        return LinasConfig()
    known = list(LinasConfig.__dataclass_fields__)
    if not isinstance(value, dict):
        raise HwnasUserError(f"{source}: linas must be a mapping with some of {known}")
    unknown = sorted(str(k) for k in set(value) - set(known))
    if unknown:
        raise HwnasUserError(f"{source}: unknown linas keys {unknown}; expected some of {known}")
    for k, v in value.items():
        if k == "seeds":
            if not isinstance(v, bool):
                raise HwnasUserError(f"{source}: linas.seeds must be true or false, got {_short(v)}")
        elif k in LINAS_INTS:
            if not (is_int(v) and v >= LINAS_INTS[k]):
                raise HwnasUserError(f"{source}: linas.{k} must be an integer >= {LINAS_INTS[k]}, got {_short(v)}")
        elif not (is_number(v) and v >= 0 and (k != "crossover_prob" or v <= 1)):
            raise HwnasUserError(f"{source}: linas.{k} must be a number >= 0{' and <= 1' if k == 'crossover_prob' else ''}, "
                                 f"got {_short(v)}")
    return LinasConfig(**value)

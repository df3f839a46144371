"""LINAS search: real-evaluation rounds that train predictors, predictor-driven NSGA-II between them.

Round 0 evaluates random sub-networks for real. Each later round fits the accuracy predictor(s) on
everything evaluated so far, runs pymoo's NSGA-II on *predicted* objectives for thousands of
evaluations, and evaluates the final population for real - skipping sub-networks already evaluated.
The base model stays in memory for the whole run. Every real evaluation is appended to
`evaluations.jsonl` (named fields, `docs/formats.md`), so a killed search resumes losing at most the
evaluation in flight.

Objectives are named metrics: `<task>.<metric>` (real evaluation, e.g. `wikitext2.ppl`,
`arc_easy.acc_norm`), `params` / `size_mb` (exact), and `prefill_ms` / `decode_ms_per_token` /
`peak_mem_mb` (a fitted latency model for a device profile). Budgets constrain any of them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .compression import PLAIN, Compression, compression_amount
from .errors import HwnasUserError, is_int, is_number
from .fileio import append_jsonl, read_jsonl, write_json, write_yaml
from .space import SearchSpace
from .subnet import Subnet

STORE_VERSION = 1
COST_METRICS = ("params", "size_mb")
LATENCY_METRICS = ("prefill_ms", "decode_ms_per_token", "peak_mem_mb")


# --- configuration ----------------------------------------------------------------------------


def latency_target(metric: str) -> tuple[str, str] | None:
    """(target, device) of a latency metric: `decode_ms_per_token` -> (.., ""), and with several
    latency models `decode_ms_per_token@ov` -> (.., "ov"); None for any other metric."""
    target, _, device = metric.partition("@")
    return (target, device) if target in LATENCY_METRICS else None


@dataclass(frozen=True)
class Objective:
    metric: str  # "<task>.<metric>" | params | size_mb | prefill_ms | decode_ms_per_token | peak_mem_mb (@device)
    goal: str = "min"  # min | max

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
    algorithm: str = "linas"  # linas | nsga2 (real evaluations only) | random
    backend: str | None = None  # whose weight formats a compressed space simulates (default: the latency model's)
    seed: int = 0
    data: str | None = None
    run_id: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        from .fileio import read_yaml_file

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
        from .evaluate.tasks import get_task

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
        if self.algorithm not in ("linas", "nsga2", "random"):
            raise HwnasUserError(f"{source}: algorithm must be linas, nsga2 or random")

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


# --- encoding ---------------------------------------------------------------------------------


class Encoding:
    """Integer genes for a space: keep/drop per droppable layer (or one depth gene in prefix mode),
    then one width index per layer, then the compression section's format genes (per layer: the
    attention's then the MLP's, or one per layer; then the embedding's and the head's; or a single
    gene for the whole network). Decoding repairs to the minimum depth by re-adding the most
    influential dropped layers."""

    def __init__(self, space: SearchSpace, layer_scores: Sequence[float] | None = None) -> None:
        self.space = space
        self.n = space.num_layers
        self.widths = np.asarray(space.mlp_widths)
        self.formats = list(space.weight_formats)
        self.droppable = list(space.droppable_layers)
        scores = list(layer_scores) if layer_scores else [0.0] * self.n
        self.readd_order = sorted(self.droppable, key=lambda i: -scores[i])  # most influential first
        self.n_layer_genes = 1 if space.mode == "prefix" else len(self.droppable)
        self.per_layer, self.whole = space.format_genes()
        self.fmt_start = self.n_layer_genes + self.n
        self.n_genes = self.fmt_start + self.per_layer * self.n + self.whole
        upper_layer = len(space.allowed_depths) - 1 if space.mode == "prefix" else 1
        self.xu = np.array([upper_layer] * self.n_layer_genes + [len(self.widths) - 1] * self.n
                           + [len(self.formats) - 1] * (self.n_genes - self.fmt_start))

    def keep_mask(self, x: np.ndarray) -> np.ndarray:
        """(pop, n) booleans: which base layers each genome keeps (after depth repair)."""
        x = np.atleast_2d(x).astype(int)
        pop = x.shape[0]
        keep = np.ones((pop, self.n), dtype=bool)
        if self.space.mode == "prefix":
            depths = np.asarray(self.space.allowed_depths)[x[:, 0]]
            keep &= np.arange(self.n)[None, :] < depths[:, None]
            return keep
        keep[:, self.droppable] = x[:, : self.n_layer_genes] == 1
        low = min(self.space.allowed_depths)
        for r in np.nonzero(keep.sum(1) < low)[0]:
            for i in self.readd_order:
                if keep[r].sum() >= low:
                    break
                keep[r, i] = True
        return keep

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Genes rewritten so that decode(x) needs no repair (keeps the population honest)."""
        x = np.atleast_2d(x).astype(int).copy()
        if self.space.mode != "prefix":
            x[:, : self.n_layer_genes] = self.keep_mask(x)[:, self.droppable].astype(int)
        return x

    def width_values(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x).astype(int)
        return self.widths[x[:, self.n_layer_genes : self.fmt_start]]

    def format_indices(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Format indices per genome: attention (pop, n), MLP (pop, n), embedding (pop,), head (pop,)."""
        x = np.atleast_2d(x).astype(int)
        pop, n, f = x.shape[0], self.n, x[:, self.fmt_start:]
        if self.whole == 0:  # one format (no compression genes)
            zeros = np.zeros((pop, n), dtype=int)
            return zeros, zeros, zeros[:, 0], zeros[:, 0]
        if self.per_layer == 0:  # one gene for the network
            g = np.repeat(f[:, :1], n, axis=1)
            return g, g, f[:, 0], f[:, 0]
        attn = f[:, :n]
        mlp = f[:, n: 2 * n] if self.per_layer == 2 else attn
        return attn, mlp, f[:, -2], f[:, -1]

    def decode(self, x: np.ndarray) -> list[Subnet]:
        keep, widths = self.keep_mask(x), self.width_values(x)
        attn, mlp, embed, head = self.format_indices(x)
        fm = self.formats
        out = []
        for r, (k, w) in enumerate(zip(keep, widths)):
            comp = None
            if self.whole:
                comp = Compression(tuple(fm[i] for i in attn[r][k]), tuple(fm[i] for i in mlp[r][k]),
                                   fm[embed[r]], fm[head[r]])
            out.append(Subnet(tuple(np.nonzero(k)[0].tolist()), tuple(w[k].tolist()), comp))
        return out

    def encode(self, s: Subnet) -> np.ndarray:
        x = np.zeros(self.n_genes, dtype=int)
        if self.space.mode == "prefix":
            x[0] = list(self.space.allowed_depths).index(s.depth)
        else:
            kept = set(s.layers)
            x[: self.n_layer_genes] = [1 if i in kept else 0 for i in self.droppable]
        lookup = {int(w): j for j, w in enumerate(self.widths)}
        top = len(self.widths) - 1
        per_layer = dict(zip(s.layers, s.mlp_widths))
        x[self.n_layer_genes : self.fmt_start] = [lookup[per_layer[i]] if i in per_layer else top for i in range(self.n)]
        if self.whole:
            comp = s.compression or Compression.uniform(PLAIN, s.depth)
            index = {f: j for j, f in enumerate(self.formats)}
            try:
                attn = dict(zip(s.layers, (index[f] for f in comp.attn)))
                mlp = dict(zip(s.layers, (index[f] for f in comp.mlp)))
                ends = [index[comp.embed], index[comp.head]]
            except KeyError as exc:
                raise HwnasUserError(f"weight format {exc} is not in the space's formats {self.formats}") from None
            f = x[self.fmt_start:]
            if self.per_layer == 0:
                f[0] = ends[1]
            else:
                f[: self.n] = [attn.get(i, 0) for i in range(self.n)]
                if self.per_layer == 2:
                    f[self.n: 2 * self.n] = [mlp.get(i, 0) for i in range(self.n)]
                f[-2:] = ends
        return x

    def features(self, x: np.ndarray) -> np.ndarray:
        """The predictor features (`hwnas.predictors.subnet_features`), straight from genes."""
        keep, widths = self.keep_mask(x), self.width_values(x)
        frac = np.where(keep, widths / self.space.intermediate_size, 0.0)
        parts = [keep.astype(float), frac, keep.sum(1, keepdims=True) / self.n, frac.sum(1, keepdims=True) / self.n]
        if self.space.compressed:
            amount = np.asarray([compression_amount(f) for f in self.formats])
            attn, mlp, embed, head = self.format_indices(x)
            parts += [np.where(keep, amount[attn], 0.0), np.where(keep, amount[mlp], 0.0),
                      amount[embed][:, None], amount[head][:, None]]
        return np.concatenate(parts, axis=1)


# --- the results store ------------------------------------------------------------------------


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
        return np.asarray([metric_value(r, metric) for r in self.records], dtype=float)


def metric_value(rec: dict[str, Any], metric: str) -> float:
    if metric.startswith("measured."):  # e.g. measured.decode_ms_per_token (KeyError/TypeError if not measured)
        return float(rec["latency_measured"][metric.split(".", 1)[1]])
    if metric in rec.get("costs", {}):
        return float(rec["costs"][metric])
    if metric in rec.get("latency_predicted", {}) and rec["latency_predicted"][metric] is not None:
        return float(rec["latency_predicted"][metric])
    task, _, name = metric.rpartition(".")  # task names may hold dots (text:PATH); metric names do not
    return float(rec["metrics"][task][name])


# --- fronts and hypervolume ---------------------------------------------------------------------


def pareto_mask(f: np.ndarray) -> np.ndarray:
    """Non-dominated rows of a minimisation matrix."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    mask = np.zeros(len(f), dtype=bool)
    if len(f):
        mask[NonDominatedSorting().do(f, only_non_dominated_front=True)] = True
    return mask


def hypervolume(f: np.ndarray, ideal: np.ndarray, nadir: np.ndarray) -> float:
    """Hypervolume of minimisation points normalised to [ideal, nadir] (reference point 1.1)."""
    from pymoo.indicators.hv import HV

    if not len(f):
        return 0.0
    z = (f - ideal) / np.maximum(nadir - ideal, 1e-12)
    z = z[(z <= 1.1).all(1)]
    return float(HV(ref_point=np.full(f.shape[1], 1.1))(z)) if len(z) else 0.0


# --- objectives -------------------------------------------------------------------------------


class CostModel:
    """Exact parameter count and weight size of sub-networks (vectorised over genomes): fp32, or
    with a compressed sub-network's per-block formats (bits per weight of each format; norms stay
    fp32; embedding and head are stored apart, as the runtimes store them)."""

    def __init__(self, config) -> None:  # noqa: ANN001
        from .modeling import ParamCounter

        self.counter = ParamCounter(config)

    def params(self, keep: np.ndarray, widths: np.ndarray) -> np.ndarray:
        return self.counter.params(keep, widths)

    def of_subnet(self, s: Subnet) -> dict[str, float]:
        p = self.counter.of_widths(s.mlp_widths)
        return {"params": p, "size_mb": self.size_bytes(s) / 1e6}

    def size_bytes(self, s: Subnet) -> float:
        from .latency import format_bits, subnet_arrays

        keep, widths, formats = subnet_arrays([s], self.counter.num_layers, with_formats=True)
        bits = format_bits(formats) if s.compression is not None else None
        return float(self.counter.weight_bytes(keep, widths, bits)[0])


ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class SearchResult:
    run_dir: Path
    records: list[dict[str, Any]]
    objectives: list[Objective]
    front: list[int]  # indices into records
    hypervolume_history: list[tuple[int, float]]


class Search:
    """One search run: model in memory, evaluator prepared once, store on disk."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, supernet=None, evaluator=None,  # noqa: ANN001
                 progress: ProgressFn | None = None, metrics_cache: dict[str, dict] | None = None) -> None:
        from .outdir import check_out, claim_dir
        from .supernet import open_supernet

        self.cfg = cfg
        check_out(run_dir, "search", legacy=(STORE_FILE,))
        self.sn = supernet or open_supernet(cfg.model, channel_order=cfg.channel_order, data_dir=cfg.data)
        if cfg.space:
            self.space = SearchSpace.load(cfg.space, num_layers=self.sn.num_layers,
                                          intermediate_size=self.sn.intermediate_size)
        else:
            self.space = self.sn.default_space()
        self.encoding = Encoding(self.space, self.sn.order.layer_scores if self.sn.order else None)
        self.costs = CostModel(self.sn.model.config)
        from .latency import LatencyModel  # issue: latency model

        self.latencies = {name: LatencyModel.load(folder) for name, folder in cfg.latency_sources().items()}
        self.schemes = self._weight_schemes()
        if evaluator is None:
            from .evaluate.evaluator import Evaluator

            evaluator = Evaluator(self.sn.base.tokenizer, cfg.tasks, limit=cfg.limit, seed=cfg.seed,
                                  data_dir=cfg.data, ppl_windows=cfg.ppl_windows, ppl_window=cfg.ppl_window)
        self.evaluator = evaluator
        # the folder is made only once everything the run needs has loaded (bad input leaves nothing)
        self.run_dir = claim_dir(run_dir, "search", legacy=(STORE_FILE,))
        (self.run_dir / "rounds").mkdir(exist_ok=True)
        self.store = ResultsStore(self.run_dir / STORE_FILE)
        self.progress = progress
        self.metrics_cache = metrics_cache  # subnet key -> metrics; shared by runs that compare algorithms
        self.hv_history: list[tuple[int, float]] = []
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None
        write_yaml(self.run_dir / "config.yaml", cfg.to_dict())
        self.space.save(self.run_dir / "space.yaml")

    def _weight_schemes(self) -> dict[str, Any]:
        """The target runtime's numerics for the space's weight formats (empty: fp32 only)."""
        from .compression import check_formats, schemes_of

        if not self.space.compressed:
            return {}
        runtimes = {lm.profile.backend for lm in self.latencies.values()}
        runtime = self.cfg.backend or (runtimes.pop() if len(runtimes) == 1 else None)
        if runtime is None:
            raise HwnasUserError("the space searches weight formats: name the runtime that will run them "
                                 "(backend: in the run config; latency models of several backends do not say)")
        schemes = schemes_of(runtime)
        check_formats(self.space.weight_formats, schemes, f"{runtime} (space '{self.space.name}')")
        return schemes

    # objective values ----------------------------------------------------------------------

    @property
    def budget(self) -> int:
        lc = self.cfg.linas
        return lc.initial + lc.rounds * lc.per_round

    def _latency_of(self, subnets: list[Subnet], every_target: bool = False) -> dict[str, np.ndarray]:
        """Predicted latency metrics (`target` or `target@device`): those the run optimizes or
        budgets, or every target of every device."""
        lat = self.cfg.latency
        needed = {o.metric for o in self.cfg.objectives} | set(self.cfg.budgets)
        out: dict[str, np.ndarray] = {}
        for name, lm in self.latencies.items():
            suffix = f"@{name}" if name else ""
            wanted = [t for t in LATENCY_METRICS if t + suffix in needed]
            if not (every_target or wanted):
                continue
            pred = lm.predict_subnets(subnets, prefill=lat["prefill"], decode=lat["decode"], batch=lat["batch"],
                                      targets=None if every_target else wanted)
            out.update({t + suffix: v for t, v in pred.items()})
        return out

    def objective_matrix(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Minimisation matrix of the real evaluations (accuracy real, costs exact, latency predicted)."""
        return np.asarray([[o.sign * metric_value(r, o.metric) for o in self.cfg.objectives] for r in records],
                          dtype=float).reshape(len(records), len(self.cfg.objectives))

    def budget_slack(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """(n, budgets) pymoo-style constraint values: <= 0 where a budget is met. A budget is an
        upper bound for a metric minimised (or not an objective), a lower bound for one maximised."""
        cols = []
        for metric, bound in self.cfg.budgets.items():
            goal = next((o.goal for o in self.cfg.objectives if o.metric == metric), "min")
            vals = np.asarray(values[metric], dtype=float)
            cols.append(vals - bound if goal == "min" else bound - vals)
        return np.stack(cols, 1)

    def _record_values(self, records: list[dict[str, Any]], metrics) -> dict[str, np.ndarray]:  # noqa: ANN001
        return {m: np.asarray([metric_value(r, m) for r in records], dtype=float) for m in metrics}

    def feasible(self, records: list[dict[str, Any]]) -> np.ndarray:
        if not self.cfg.budgets:
            return np.ones(len(records), dtype=bool)
        return (self.budget_slack(self._record_values(records, self.cfg.budgets)) <= 0).all(1)

    # real evaluation -------------------------------------------------------------------------

    @property
    def spent(self) -> int:
        """Real evaluations that count against the budget (the base model's does not)."""
        return sum(1 for r in self.store.records if not r.get("is_base"))

    def evaluate(self, s: Subnet, round_: int, predicted: dict[str, float] | None = None,
                 base: bool = False) -> dict[str, Any]:
        if s in self.store:
            return next(r for r in self.store.records if r["subnet"] == s.to_dict())
        import torch

        from . import __version__

        t0 = time.perf_counter()
        cached = self.metrics_cache is not None and s.key() in self.metrics_cache
        if cached:
            metrics = self.metrics_cache[s.key()]
        else:
            from .compression import simulate

            model = simulate(self.sn.materialize(s, share_weights=True), s.compression, self.schemes)
            with torch.no_grad():
                res = self.evaluator.evaluate(model)
            metrics = {}
            for name, tr in res.tasks.items():
                d = tr.to_dict()
                metrics[name] = {k: d[k] for k in ("acc", "acc_norm", "stderr", "ppl", "n", "tokens", "windows")
                                 if d.get(k) is not None}
            if self.metrics_cache is not None:
                self.metrics_cache[s.key()] = metrics
        lat = {k: float(v[0]) for k, v in self._latency_of([s], every_target=True).items()}
        rec = {
            "version": STORE_VERSION,
            "run_id": self.run_dir.name,
            "index": len(self.store),
            "round": round_,
            "is_base": base,
            "subnet": s.to_dict(),
            "metrics": metrics,
            "costs": self.costs.of_subnet(s),
            "latency_predicted": lat,
            "latency_measured": None,
            "predicted": predicted or {},
            "device_profile": ({n or "default": lm.profile_id for n, lm in self.latencies.items()}
                               if len(self.latencies) > 1 else
                               next((lm.profile_id for lm in self.latencies.values()), None)),
            "seeds": {"run": self.cfg.seed, "eval": self.cfg.seed},
            "versions": {"hwnas": __version__, "torch": torch.__version__, "transformers": _version("transformers")},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "eval_seconds": round(time.perf_counter() - t0, 3),
            "cached": cached,
        }
        self.store.append(rec)
        self._report(round_)
        return rec

    def _report(self, round_: int) -> None:
        if self._bounds is None and len(self.store) >= 2:
            f = self.objective_matrix(self.store.records)
            self._bounds = (f.min(0), f.max(0))
        hv = self.current_hypervolume() if self._bounds is not None else 0.0
        if self.progress:
            self.progress({"round": round_, "evaluations": self.spent, "budget": self.budget, "hypervolume": hv})

    def current_hypervolume(self) -> float:
        recs = [r for r, ok in zip(self.store.records, self.feasible(self.store.records)) if ok]
        if not recs or self._bounds is None:
            return 0.0
        return hypervolume(self.objective_matrix(recs), *self._bounds)

    # candidates ------------------------------------------------------------------------------

    def _random_new(self, n: int, rng: random.Random, taken: set[str]) -> list[Subnet]:
        out: list[Subnet] = []
        tries = 0
        while len(out) < n and tries < 100 * n:
            tries += 1
            # the space's own sampler: uniform depth, then layers and widths. Uniform random genes
            # keep each droppable layer with p=1/2 and repair to the minimum depth, so nearly every
            # random sub-network had the minimum depth (seen in a real run: round 0 all depth 24)
            d = self.encoding.space.sample(rng)
            s = Subnet.from_dict(d)
            if s.key() not in taken:
                taken.add(s.key())
                out.append(s)
        return out

    def heuristic_seeds(self, n: int, taken: set[str]) -> list[Subnet]:
        """Up to `n` sub-networks a user gets without searching, so the search starts where the
        baselines are (and its front can only improve on them): the base and ShortGPT-style layer
        dropping (a quarter, half and all of the droppable layers, least influential first) and
        one uniform MLP width, each with every weight in one of the space's formats (the base in
        fp32 is the run's reference point already)."""
        space = self.space
        scores = self.sn.order.layer_scores if self.sn.order else None
        most = space.num_layers - min(space.allowed_depths)
        drops = sorted({k for k in (0, most // 4, most // 2, most)})
        full, mid = space.mlp_widths[-1], space.mlp_widths[len(space.mlp_widths) // 2]
        archs = [Subnet.dropping(space, scores, k, full) for k in drops] + [Subnet.dropping(space, scores, 0, mid)]
        formats = sorted(space.weight_formats, key=lambda f: f != "fp32")
        out: list[Subnet] = []
        for f in reversed(formats):  # most compressed first: the strongest baselines
            for a in archs:
                s = a if f == "fp32" else a.compressed(Compression.uniform(f, a.depth))
                if len(out) < n and s.key() not in taken and (space.mode == "prefix" or s.depth in space.allowed_depths):
                    taken.add(s.key())
                    out.append(s)
        return out

    def _round_file(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"round_{r:02d}.json"

    def _candidates(self, r: int) -> tuple[list[Subnet], list[dict[str, float]]]:
        """The sub-networks round r evaluates; fixed on first computation (a resume reuses them)."""
        path = self._round_file(r)
        if path.is_file():
            data = json.loads(path.read_text())
            return ([Subnet.from_dict(c) for c in data["subnets"]],
                    data.get("predicted", [{}] * len(data["subnets"])))
        rng = random.Random(self.cfg.seed * 1009 + r)
        lc = self.cfg.linas
        if r == 0:
            taken = set(self.store.keys)
            seeds = self.heuristic_seeds(lc.initial // 4, taken) if lc.seeds else []
            cands = seeds + self._random_new(lc.initial - len(seeds), rng, taken)
            preds = [{}] * len(cands)
        else:
            cands, preds = self._predicted_front(r, rng)
        write_json(path, {"version": 1, "round": r, "subnets": [c.to_dict() for c in cands], "predicted": preds})
        return cands, preds

    def fit_predictors(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        from .predictors import fit_predictor

        x = self.encoding.features(np.stack([self.encoding.encode(Subnet.from_dict(r["subnet"]))
                                             for r in records]))
        out = {}
        for o in self.cfg.objectives:
            if o.kind == "accuracy":
                y = [metric_value(r, o.metric) for r in records]
                out[o.metric] = fit_predictor(x, y, target=o.metric, seed=self.cfg.seed)
        return out

    def _predicted_front(self, r: int, rng: random.Random) -> tuple[list[Subnet], list[dict[str, float]]]:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.optimize import minimize

        prior = [rec for rec in self.store.records if rec["round"] < r]
        predictors = self.fit_predictors(prior)
        for metric, p in predictors.items():
            p.save(self.run_dir / "rounds" / f"predictor_{r:02d}_{metric.replace('.', '_')}.json")
        problem = PredictedProblem(self, predictors)
        lc = self.cfg.linas
        algo = _nsga2(self, lc, NSGA2, sampling=self._seed_population(prior, lc.population, rng))
        res = minimize(problem, algo, ("n_evals", lc.inner_evaluations), seed=self.cfg.seed * 31 + r, verbose=False)
        pop = res.pop
        order = np.lexsort((-np.nan_to_num(pop.get("crowding").ravel(), posinf=1e9), pop.get("rank").ravel()))
        taken = set(self.store.keys)
        cands, preds = [], []
        x_all = self.encoding.repair(pop.get("X")[order])
        f_all = pop.get("F")[order]
        for x, f in zip(x_all, f_all):
            s = self.encoding.decode(x)[0]
            if s.key() in taken:
                continue
            taken.add(s.key())
            cands.append(s)
            preds.append({o.metric: float(o.sign * v) for o, v in zip(self.cfg.objectives, f)})
            if len(cands) == lc.per_round:
                break
        if len(cands) < lc.per_round:
            extra = self._random_new(lc.per_round - len(cands), rng, taken)
            cands += extra
            preds += [{}] * len(extra)
        return cands, preds

    def _seed_population(self, prior: list[dict[str, Any]], size: int, rng: random.Random) -> np.ndarray:
        """Start the inner search from the best real points so far, topped up at random."""
        f = self.objective_matrix(prior)
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        fronts = NonDominatedSorting().do(f) if len(f) else []
        idx = [i for fr in fronts for i in fr][:size]
        xs = [self.encoding.encode(Subnet.from_dict(prior[i]["subnet"]))
              for i in idx]
        while len(xs) < size:
            xs.append(np.array([rng.randint(0, int(u)) for u in self.encoding.xu]))
        return self.encoding.repair(np.stack(xs))

    # the loops -------------------------------------------------------------------------------

    def run(self) -> SearchResult:
        self.evaluate(self.sn.full_subnet(), 0, base=True)  # the reference point of every report
        {"linas": self._run_linas, "nsga2": self._run_nsga2, "random": self._run_random}[self.cfg.algorithm]()
        return self.result()

    def _run_linas(self) -> None:
        for r in range(self.cfg.linas.rounds + 1):
            cands, preds = self._candidates(r)
            for s, p in zip(cands, preds):
                self.evaluate(s, r, p)
            self.hv_history.append((self.spent, self.current_hypervolume()))

    def _run_random(self) -> None:
        rng = random.Random(self.cfg.seed)
        taken = set(self.store.keys)
        while self.spent < self.budget:
            s = self._random_new(1, rng, taken)[0]
            self.evaluate(s, 0)
        self.hv_history.append((self.spent, self.current_hypervolume()))

    def _run_nsga2(self) -> None:
        """Plain NSGA-II on real evaluations (the baseline LINAS is compared with)."""
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.evaluator import Evaluator as PymooEvaluator
        from pymoo.core.problem import Problem

        lc = self.cfg.linas
        pop_size = max(10, lc.per_round // 2)
        problem = Problem(n_var=self.encoding.n_genes, n_obj=len(self.cfg.objectives),
                          n_ieq_constr=len(self.cfg.budgets), xl=0, xu=self.encoding.xu, vtype=int)
        algo = _nsga2(self, lc, NSGA2, pop_size=pop_size)
        algo.setup(problem, seed=self.cfg.seed, termination=("n_gen", 10**9))
        gen = 0
        while self.spent < self.budget:
            pop = algo.ask()
            x = self.encoding.repair(pop.get("X"))
            recs = []
            for s in self.encoding.decode(x):
                if self.spent >= self.budget and s not in self.store:
                    break
                recs.append(self.evaluate(s, gen))
            if len(recs) < len(x):
                break
            pop.set("X", x)
            f = self.objective_matrix(recs)
            pop.set("F", f)
            if self.cfg.budgets:
                pop.set("G", self.budget_slack(self._record_values(recs, self.cfg.budgets)))
            PymooEvaluator().eval(problem, pop, skip_already_evaluated=True)
            algo.tell(infills=pop)
            gen += 1
        self.hv_history.append((self.spent, self.current_hypervolume()))

    def result(self) -> SearchResult:
        recs = self.store.records
        f = self.objective_matrix(recs)
        ok = self.feasible(recs)
        mask = np.zeros(len(recs), dtype=bool)
        if ok.any():
            idx = np.nonzero(ok)[0]
            mask[idx[pareto_mask(f[idx])]] = True
        front = [int(i) for i in np.nonzero(mask)[0]]
        write_json(self.run_dir / "front.json", {
            "version": 1, "objectives": [asdict(o) for o in self.cfg.objectives], "budgets": self.cfg.budgets,
            "front": [{"index": recs[i]["index"], "subnet": recs[i]["subnet"],
                       **{o.metric: metric_value(recs[i], o.metric) for o in self.cfg.objectives}} for i in front],
            "hypervolume_history": self.hv_history})
        return SearchResult(self.run_dir, recs, self.cfg.objectives, front, self.hv_history)


class PredictedProblem:
    """pymoo problem over genes whose accuracy objectives come from predictors (vectorised)."""

    def __new__(cls, search: Search, predictors: dict[str, Any]):  # noqa: ANN204
        from pymoo.core.problem import Problem

        enc = search.encoding

        class _P(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=enc.n_genes, n_obj=len(search.cfg.objectives),
                                 n_ieq_constr=len(search.cfg.budgets), xl=0, xu=enc.xu, vtype=int)

            def _evaluate(self, x, out, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
                x = enc.repair(np.round(x).astype(int))
                keep, widths = enc.keep_mask(x), enc.width_values(x)
                values = predicted_values(search, predictors, x, keep, widths)
                out["F"] = np.stack([o.sign * values[o.metric] for o in search.cfg.objectives], 1)
                if search.cfg.budgets:
                    out["G"] = search.budget_slack(values)

        return _P()


def predicted_values(search: Search, predictors: dict[str, Any], x: np.ndarray, keep: np.ndarray,
                     widths: np.ndarray) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    params = search.costs.params(keep, widths)
    values["params"] = params.astype(float)
    bits = None
    if search.space.compressed:
        from .latency import format_bits

        names = np.asarray(search.encoding.formats, dtype=object)
        bits = format_bits(tuple(names[i] for i in search.encoding.format_indices(x)))
    values["size_mb"] = search.costs.counter.weight_bytes(keep, widths, bits) / 1e6
    needed = {o.metric for o in search.cfg.objectives} | set(search.cfg.budgets)
    if any(latency_target(m) for m in needed):
        values.update(search._latency_of(search.encoding.decode(x)))
    feats = None
    for metric, p in predictors.items():
        feats = search.encoding.features(x) if feats is None else feats
        values[metric] = p.predict_features(feats)
    return values


def _nsga2(search: Search, lc: LinasConfig, nsga2_cls, pop_size: int | None = None, sampling=None):  # noqa: ANN001, ANN202
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    return nsga2_cls(
        pop_size=pop_size or lc.population,
        sampling=sampling if sampling is not None else IntegerRandomSampling(),
        crossover=SBX(prob=lc.crossover_prob, eta=lc.crossover_eta, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=lc.mutation_eta, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "absent"


__all__ = ["Encoding", "LinasConfig", "latency_target", "Objective", "ResultsStore", "RunConfig", "Search", "SearchResult",
           "hypervolume", "pareto_mask"]

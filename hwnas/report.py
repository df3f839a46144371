"""Reports on a search run: Pareto plots (PNG), the front as a markdown table, the roofline distance
of each point, and picking one sub-network by rules relative to the base model."""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .bench import ratio_spread
from .errors import HwnasUserError, is_int
from .fileio import append_jsonl, read_jsonl, write_text
from .search import (
    COST_METRICS,
    LATENCY_METRICS,
    EvalRecord,
    Objective,
    RunConfig,
    front_indices,
    latency_target,
    metric_value,
)
from .subnet import Subnet

MEASURED = "measured.jsonl"  # the front measured with `bench` (hwnas report --measure-front), one line each
_RULE = re.compile(r"^\s*([\w.:/\-]+?)\s*(<=|>=|<|>)\s*(.+?)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass
class Run:
    run_dir: Path
    config: RunConfig
    records: list[dict[str, Any]]

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        run_dir = Path(run_dir)
        store = run_dir / "evaluations.jsonl"
        if not run_dir.is_dir():
            raise HwnasUserError(f"search run folder not found: {run_dir}")
        if not store.is_file():
            raise HwnasUserError(f"{run_dir} is not a search run folder (no evaluations.jsonl)")
        from .search import ResultsStore

        if not (run_dir / "config.yaml").is_file():
            raise HwnasUserError(f"{run_dir} has no config.yaml: not a folder written by `hwnas search`")
        cfg = RunConfig.load(run_dir / "config.yaml")
        records = ResultsStore(store).records
        for r in records:
            _check_record(r, cfg, store)
        _merge_all(records, _read_measured(run_dir / MEASURED))
        return cls(run_dir, cfg, records)

    @property
    def base(self) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("is_base")), None)

    def value(self, rec: dict[str, Any], metric: str) -> float:
        return metric_value(rec, metric)

    def front(self) -> list[dict[str, Any]]:
        """The run's Pareto front, as `front.json` has it: records within the run's budgets, then
        non-dominated (`hwnas.search.front_indices`)."""
        return [self.records[i] for i in front_indices(self.records, self.config.objectives, self.config.budgets)]


def _check_record(rec: dict[str, Any], cfg: RunConfig, store: Path) -> None:
    """A record of the store has what a report reads: its index and round, and a number for every
    objective and budget (hwnas writes them so; anything else was edited or written by something else)."""
    where = f"{store}: record {rec.get('index')!r}"
    if not is_int(rec.get("index")) or not is_int(rec.get("round")):
        raise HwnasUserError(f"{store}: a record without an integer index and round; it was not written by "
                             "hwnas search (remove that line)")
    for kind, metric in [*(("objective", o.metric) for o in cfg.objectives), *(("budget", m) for m in cfg.budgets)]:
        try:
            v = metric_value(rec, metric)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            v = None
        if v is None or not np.isfinite(v):
            raise HwnasUserError(f"{where} has no number for {kind} {metric}; remove that line or "
                                 "resume the search to redo it")


def _key(subnet: dict[str, Any]) -> str:
    return Subnet.from_dict(subnet).key()


def _merge_measured(rec: dict[str, Any], lines: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> None:
    """Put one sub-network's measured.jsonl lines on one device (one per interleaved round) into its
    record: `latency_measured` (`target@device` with several devices) holds the median over rounds,
    `measured_speedup` each timed target's speed-up over the base measured in the same rounds
    (median and range of the per-round ratios: a range across 1 is within the noise)."""
    suffix = f"@{lines[0]['latency_device']}" if lines[0].get("latency_device") else ""
    have = [t for t in LATENCY_METRICS if all(_number(m.get(t)) for m in lines)]  # a metric declared later: absent
    rec["latency_measured"] = {**(rec.get("latency_measured") or {}),
                               **{t + suffix: float(np.median([m[t] for m in lines])) for t in have}}
    by_round = {m.get("round", 0): m for m in base or ()}
    pairs = [(by_round[m.get("round", 0)], m) for m in lines if m.get("round", 0) in by_round]
    if pairs and not rec.get("is_base"):
        rec["measured_speedup"] = {**(rec.get("measured_speedup") or {}), **{
            t + suffix: ratio_spread([b[t] / m[t] for b, m in pairs])
            for t in have if metrics.METRICS[t].additive and all(_number(b.get(t)) and m[t] > 0 for b, m in pairs)}}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_measured(path: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """subnet key -> device name ("" for a run's single latency model) -> its measurements (rounds)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in read_jsonl(path):  # a line cut by a kill is skipped: that measurement is redone
        if not any(_number(rec.get(t)) for t in LATENCY_METRICS):
            raise HwnasUserError(f"{path}: a measurement without a number for any of {', '.join(LATENCY_METRICS)}; "
                                 "remove that line and measure again (--measure-front)")
        out.setdefault(Subnet.from_dict(rec.get("subnet"), source=f"{path}: record").key(),
                       {}).setdefault(rec.get("latency_device", ""), []).append(rec)
    return out


def _merge_all(records: list[dict[str, Any]], measured: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    base = next((r for r in records if r.get("is_base")), None)
    base_lines = measured.get(_key(base["subnet"]), {}) if base else {}
    for r in records:  # the store is append-only: measurements made later are merged in on load
        for device, lines in measured.get(_key(r["subnet"]), {}).items():
            _merge_measured(r, lines, base_lines.get(device))


MEASURE_ROUNDS = 3  # --measure-front: interleaved rounds of the base and the front


def measure_front(run: Run, *, threads: int = 1, rounds: int = MEASURE_ROUNDS, progress: Any = None) -> int:
    """Measure the base and every front sub-network with `bench` on each latency model's backend
    and the run's settings, `rounds` times interleaved (every one once per round, in a shuffled
    order, each in a clean worker), appending to RUN_DIR/measured.jsonl (one line per measurement,
    resumable); returns how many measurements were made."""
    from .bench import bench_subnet, interleaved

    sources = run.config.latency_sources()
    if not sources:
        raise HwnasUserError("the run has no latency model, so there is no backend to measure the front on")
    import yaml

    lat = run.config.latency
    path = run.run_dir / MEASURED
    done = _read_measured(path)
    front = list({_key(r["subnet"]): r for r in ([run.base] if run.base else []) + run.front()}.values())
    jobs = [(d, folder, r) for d, folder in sources.items() for r in front]
    made = 0

    def have(i: int, rnd: int) -> bool:
        d, _, r = jobs[i]
        return len(done.get(_key(r["subnet"]), {}).get(d, [])) > rnd

    def measure(i: int, rnd: int) -> None:
        nonlocal made
        device, folder, r = jobs[i]
        header = yaml.safe_load((Path(folder) / "latency_model.yaml").read_text()) or {}
        b = bench_subnet(run.config.model, None if r.get("is_base") else r["subnet"], header["backend"],
                         prefill=lat.get("prefill", 128), decode=lat.get("decode", 32), batch=lat.get("batch", 1),
                         threads=threads, dtype=header.get("dtype", "fp32"))
        line = {"version": 1, "index": r["index"], "round": rnd, **b.to_dict(), "latency_device": device,
                "subnet": r["subnet"]}
        append_jsonl(path, line)
        done.setdefault(_key(r["subnet"]), {}).setdefault(device, []).append(line)
        made += 1

    interleaved(range(len(jobs)), rounds, measure, done=have, progress=progress)
    _merge_all(run.records, done)
    return made


def pick(run: Run, rules: list[str], best: str) -> dict[str, Any]:
    """The record satisfying every rule (`metric OP expr`, where expr may use `base`, e.g.
    `decode_ms_per_token<=0.8*base`, `arc_easy.acc_norm>=base-0.01`) with the best `best` metric.
    `measured.<latency metric>` uses the measured value (records not measured are skipped)."""
    return shortlist(run, rules, best, 1)[0]


def shortlist(run: Run, rules: list[str], best: str, k: int) -> list[dict[str, Any]]:
    """The `k` records satisfying every rule with the best `best` values, best first (see `pick`):
    what to measure before choosing when `best` is a prediction."""
    base = run.base
    checks = []
    for rule in rules:
        metric, op, expr = parse_rule(rule)
        if "base" in expr and base is None:
            raise HwnasUserError(f"rule '{rule}' refers to the base model, which this run did not evaluate")
        bound = _safe_eval(expr, base=run.value(base, metric) if base and "base" in expr else None)
        checks.append((metric, _OPS[op], bound))
    goal_max = best.startswith("max:")
    metric_best = best[4:] if best.startswith(("max:", "min:")) else best
    ok = [r for r in run.records if all(_has(r, mt) and fn(run.value(r, mt), b) for mt, fn, b in checks)
          and _has(r, metric_best)]
    if not ok:
        raise HwnasUserError(f"no evaluated sub-network satisfies {rules}")
    return sorted(ok, key=lambda r: run.value(r, metric_best), reverse=goal_max)[:k]


def parse_rule(rule: str) -> tuple[str, str, str]:
    """(metric, operator, bound expression) of a `--pick` rule; its syntax is checked here, before
    any work, by evaluating the bound with base = 1."""
    m = _RULE.match(rule)
    if not m:
        raise HwnasUserError(f"cannot read rule '{rule}': write METRIC<=EXPR, e.g. decode_ms_per_token<=0.8*base")
    metric, op, expr = m.groups()
    _safe_eval(expr, base=1.0)
    return metric, op, expr


def _safe_eval(expr: str, base: float | None) -> float:
    if not re.fullmatch(r"[\d.\s+\-*/()eE]*", expr.replace("base", "")) or "**" in expr or len(expr) > 200:
        raise HwnasUserError(f"cannot read the bound '{expr}': use numbers, + - * / and 'base'")
    try:
        value = float(eval(expr, {"__builtins__": {}}, {"base": base}))  # checked above
    except (SyntaxError, TypeError, ValueError, ZeroDivisionError, OverflowError, MemoryError, RecursionError):
        raise HwnasUserError(f"cannot read the bound '{expr}': use numbers, + - * / and 'base'") from None
    if not np.isfinite(value):
        raise HwnasUserError(f"the bound '{expr}' is not a finite number")
    return value


def roofline_decode_ms(params: float, bytes_per_param: float, bandwidth_gbs: float) -> float:
    """Lower bound of a decode step on a memory-bound device: every weight read once."""
    return params * bytes_per_param / (bandwidth_gbs * 1e9) * 1e3


def write_report(run_dir: str | Path) -> list[Path]:
    """Plots and the front table into RUN_DIR/report/; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Run.load(run_dir)
    objs = run.config.objectives
    acc = next((o for o in objs if o.kind == "accuracy"), None)
    if acc is None:
        raise HwnasUserError("the run has no accuracy objective to plot")
    if not run.records:
        raise HwnasUserError(f"{run.run_dir} holds no evaluations yet; run (or resume) hwnas search first")
    front = run.front()
    out = run.run_dir / "report"
    out.mkdir(exist_ok=True)
    written: list[Path] = []
    latency_keys = sorted({k for r in run.records for k in (r.get("latency_predicted") or {})})
    cost_metrics = [m for m in (*latency_keys, *COST_METRICS) if all(_has(r, m) for r in run.records)]
    for cost in cost_metrics:
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        scale = 1e6 if cost == "params" else 1.0
        xs = [run.value(r, cost) / scale for r in run.records]
        ys = [run.value(r, acc.metric) for r in run.records]
        rounds = [r["round"] for r in run.records]
        sc = ax.scatter(xs, ys, c=rounds, cmap="viridis", s=14, alpha=0.7, label="evaluated")
        fig.colorbar(sc, ax=ax, label="round")
        fx = [(run.value(r, cost) / scale, run.value(r, acc.metric)) for r in front]
        fx.sort()
        if fx:
            ax.plot(*zip(*fx), "r.-", lw=1, ms=7, label="Pareto front")
        measured = [r for r in run.records if (r.get("latency_measured") or {}).get(cost) is not None]
        if measured and latency_target(cost):
            for r in measured:  # predicted -> measured, per sub-network
                ax.plot([run.value(r, cost), r["latency_measured"][cost]], [run.value(r, acc.metric)] * 2,
                        c="0.5", lw=0.8)
            ax.scatter([r["latency_measured"][cost] for r in measured],
                       [run.value(r, acc.metric) for r in measured], marker="x", c="k", label="measured")
        if run.base:
            ax.scatter([run.value(run.base, cost) / scale], [run.value(run.base, acc.metric)], marker="*", s=220,
                       c="gold", edgecolors="k", label="base model", zorder=5)
        declared = metrics.lookup(cost)  # its unit, and whether it is a prediction
        notes = [f"{'M ' if scale != 1 else ''}{declared.unit if declared else ''}".strip(),
                 "predicted" if latency_target(cost) else ""]
        notes_text = ", ".join(n for n in notes if n)
        ax.set_xlabel(cost + (f" ({notes_text})" if notes_text else ""))
        ax.set_ylabel(acc.metric)
        if acc.metric.endswith("ppl"):
            ax.set_yscale("log")
        ax.set_title(f"{run.run_dir.name}: {acc.metric[-40:]} vs {cost}", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{_slug(acc.metric)}_vs_{_slug(cost)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    written.append(_front_table(run, front, objs, out))
    return written


def _has(rec: dict[str, Any], metric: str) -> bool:
    try:
        metric_value(rec, metric)
        return True
    except (KeyError, TypeError):
        return False


def _slug(s: str) -> str:
    return re.sub(r"[^\w]+", "_", s).strip("_")


def _front_table(run: Run, front: list[dict[str, Any]], objs: list[Objective], out: Path) -> Path:
    cols = [o.metric for o in objs] + [m for m in ("params", "size_mb") if m not in {o.metric for o in objs}]
    bw = _bandwidth(run)  # of the first latency model; the roofline column refers to that device
    first = next(iter(run.config.latency_sources()), "")
    decode_key = "decode_ms_per_token" + (f"@{first}" if first else "")
    lines = [f"# Pareto front of {run.run_dir.name}", "",
             f"{len(run.records)} real evaluations; objectives: "
             + ", ".join(f"{o.metric} ({o.goal})" for o in objs), ""]
    measured = sorted({m for r in run.records for m in (r.get("latency_measured") or {}) if latency_target(m)})
    speedups = sorted({m for r in run.records for m in (r.get("measured_speedup") or {})})
    header = ["#", "depth", "weights", *cols, *(f"measured {m}" for m in measured),
              *(f"{m} speed-up vs base (rounds)" for m in speedups), "roofline decode ms" if bw else None, "subnet"]
    header = [h for h in header if h]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = ([run.base] if run.base and run.base not in front else []) + sorted(
        front, key=lambda r: run.value(r, objs[0].metric))
    for r in rows:
        rec = EvalRecord.from_dict(r)
        sub = Subnet.from_dict(rec.subnet)
        done = rec.latency_measured or {}
        cells = [("base" if rec.is_base else str(rec.index)), str(sub.depth),
                 sub.compression.summary() if sub.compression else "fp32"]
        cells += [_fmt(run.value(r, c)) for c in cols]
        cells += [_fmt(done[m]) if done.get(m) else "-" for m in measured]
        up = r.get("measured_speedup") or {}
        cells += [f"{up[m]['median']:.3f}x ({up[m]['lo']:.3f}-{up[m]['hi']:.3f})" if m in up else "-" for m in speedups]
        if bw:
            bound = roofline_decode_ms(rec.costs["size_mb"] * 1e6, 1, bw)  # bytes of the stored weights
            dec = done.get(decode_key) or (rec.latency_predicted or {}).get(decode_key)
            cells.append(f"{bound:.1f}" + (f" ({bound / dec:.0%} of it)" if dec else ""))
        cells.append("`" + json.dumps(rec.subnet, separators=(",", ":")) + "`")
        lines.append("| " + " | ".join(cells) + " |")
    path = out / "front.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _bandwidth(run: Run) -> float | None:
    """Memory bandwidth (GB/s) recorded in the run's latency model header, if the run used one."""
    sources = run.config.latency_sources()
    if not sources:
        return None
    import yaml

    header = Path(next(iter(sources.values()))) / "latency_model.yaml"
    if not header.is_file():
        return None
    roof = (yaml.safe_load(header.read_text()) or {}).get("roofline") or {}
    return float(roof["bandwidth_gbs"]) if roof.get("bandwidth_gbs") else None


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    return f"{v:.4g}"

"""Where the process-to-process noise of a latency measurement comes from, one factor at a time.

    python tools/bench_noise.py [--backend onnxruntime] [--n 10] [--rounds 2]
                                [--conditions default pin hugepages long hog] [--out noise.jsonl]

The same `--n` random sub-networks of the packaged SmolLM2 space are measured `--rounds` times under
each condition, every measurement in a fresh worker process (`hwnas bench`'s path, as the latency fit
measures its samples): prefill 128 tokens, then decode 32 tokens at 128 context, 1 thread. Rounds are
interleaved and, within a round, conditions and sub-networks run in a random order (Laaber et al.),
so drift of the host spreads over all of them. Each measurement keeps all its repeats; the report
scores min, p10, p50 (what hwnas stores), p90 and the mean by how well a second fresh worker
reproduces them: the share of sub-networks whose rounds agree within ±5 % / ±10 % (max/min over
rounds - 1), the median and worst spread, and the seconds one measurement took; and, from the same
repeats cut short, what fewer timed repeats would have given (the cost of a measurement is nearly
all its repeats: 15 x 32 decode steps). Each condition's round also takes the roofline probe the
latency model is checked with (bandwidth, GEMM; in the driver, on the core a pinned worker uses), so
the hog's slowdown can be compared with the probe's (speed normalization).
Conditions (one factor changed each):

- default    hwnas's timing options as shipped
- pin        the worker bound to one core (`--option pin=true`)
- hugepages  glibc backs large allocations with transparent huge pages (`--option hugepages=true`)
- long       10 warm-ups and 40 timed repeats instead of 2 and 15 (nn-Meter: 10 / 50)
- hog        a memory-bandwidth hog on the other core (a 256 MB copy loop), load check lifted
- share      a CPU-bound spinner on every CPU: each core runs the measurement at about half speed,
             as a slower host or a noisy neighbour would, the probe included (speed normalization's
             test)
- thp        the kernel's THP mode set to `always` for the round (needs root; restored after)
- shipped    BackendConfig's current defaults with nothing overridden (after a change: "after")

`--out` (JSONL, one line per measurement) makes a run resumable and lets `--report-only` re-print it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import hwnas  # noqa: F401
from hwnas.bench import bench_tasks
from hwnas.cli import quiet_libraries
from hwnas.fileio import append_jsonl, read_jsonl
from hwnas.latency import sample_subnets
from hwnas.measure.backend import percentile, speed_probe
from hwnas.measure.graphs import GraphSpec
from hwnas.measure.worker import run_isolated
from hwnas.metrics import METRICS
from hwnas.space import SearchSpace
from hwnas.subnet import Subnet

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
OFF = {"pin": False, "hugepages": False}  # what `default` pins down, whatever the shipped defaults become
CONDITIONS = {
    "default": OFF,
    "pin": {**OFF, "pin": True},
    "hugepages": {**OFF, "hugepages": True},
    "long": {**OFF, "warmup": 10, "repeats": 40},
    "hog": {**OFF, "max_load": 5.0},
    "share": {**OFF, "max_load": 5.0},
    "thp": OFF,
    "shipped": {},
}
STATS = {"min": min, "p10": lambda x: percentile(x, 0.1), "p50": statistics.median,
         "p90": lambda x: percentile(x, 0.9), "mean": statistics.fmean}
PHASES = ("prefill", "decode")
SPEED = {"prefill": METRICS["prefill_ms"].speed, "decode": METRICS["decode_ms_per_token"].speed}


def _hog(stop: mp.Event) -> None:  # a bandwidth hog on CPU 0
    os.sched_setaffinity(0, [0])
    a = np.ones(64 * 2**20, dtype=np.float32)
    b = np.empty_like(a)
    while not stop.is_set():
        np.copyto(b, a)


def _spin(stop: mp.Event, cpu: int) -> None:  # a CPU-bound spinner on one CPU
    os.sched_setaffinity(0, [cpu])
    while not stop.is_set():
        sum(range(10000))


@contextmanager
def condition(name: str):
    """Set up what a condition changes outside the worker's options, and undo it."""
    if name in ("hog", "share"):
        stop = mp.Event()
        procs = [mp.Process(target=_hog, args=(stop,), daemon=True)] if name == "hog" else [
            mp.Process(target=_spin, args=(stop, cpu), daemon=True) for cpu in sorted(os.sched_getaffinity(0))]
        for p in procs:
            p.start()
        time.sleep(1.0)
        try:
            yield
        finally:
            stop.set()
            for p in procs:
                p.join(5)
    elif name == "thp":
        old = next(w.strip("[]") for w in THP.read_text().split() if w.startswith("["))
        THP.write_text("always")
        try:
            yield
        finally:
            THP.write_text(old)
    else:
        yield


def measure(args: argparse.Namespace, subs: list[Subnet], out: Path) -> None:
    done = {(r["condition"], r["round"], r["key"]) for r in read_jsonl(out)} if out.exists() else set()
    rng = random.Random(args.seed)
    todo = sum((c, r, s.key()) not in done for r in range(args.rounds) for c in args.conditions for s in subs)
    t_start, n = time.perf_counter(), 0
    for rnd in range(args.rounds):
        conds = list(args.conditions)
        rng.shuffle(conds)
        for cname in conds:
            order = list(subs)
            rng.shuffle(order)
            if all((cname, rnd, s.key()) in done for s in order):
                continue
            with condition(cname):
                probe = _probe()
                for s in order:
                    if (cname, rnd, s.key()) in done:
                        continue
                    t0 = time.perf_counter()
                    res = run_isolated(args.backend, {**CONDITIONS[cname], "threads": 1},
                                       GraphSpec("model", args.model, subnet=s.to_dict()), bench_tasks(128, 32))
                    rec = {"condition": cname, "round": rnd, "key": s.key(), "probe": probe,
                           "seconds": round(time.perf_counter() - t0, 2),
                           "load": max(m.load for m in res.measurements),
                           **{m.phase: m.samples_ms for m in res.measurements}}
                    append_jsonl(out, rec)
                    n += 1
                    print(f"  round {rnd} {cname:9} {n}/{todo} decode {statistics.median(rec['decode']):6.2f} ms "
                          f"load {rec['load']:.2f} ({time.perf_counter() - t_start:.0f} s)", flush=True)


def _probe() -> dict:
    """The roofline probe, taken on the core a pinned worker runs on."""
    return speed_probe(1, pin=True)


def _spreads(groups: list[list[list[float]]], stat, k: int | None = None) -> np.ndarray:
    """max/min - 1 of `stat` over the rounds of each sub-network (each repeat list cut to `k`)."""
    return np.array([max(v) / min(v) - 1 for v in ([stat(r[:k] if k else r) for r in g] for g in groups)])


def _row(label: str, spreads: np.ndarray, tail: str = "") -> str:
    return (f"{label:32} {np.mean(spreads <= 0.05):9.0%} {np.mean(spreads <= 0.10):10.0%} "
            f"{np.median(spreads):8.1%} {spreads.max():7.1%}{tail}")


def report(out: Path, conditions: list[str]) -> None:
    recs = list(read_jsonl(out))
    print(f"{out}: {len(recs)} measurements")
    head = f"{'condition  phase    statistic':32} {'within 5%':>9} {'within 10%':>10} {'median':>8} {'worst':>7}"
    print("\n" + head + "   s/meas  load")
    by_cond: dict[str, dict[str, list[dict]]] = {}
    for r in recs:
        by_cond.setdefault(r["condition"], {}).setdefault(r["key"], []).append(r)
    for cname in (c for c in conditions if c in by_cond):
        groups = [v for v in by_cond[cname].values() if len(v) >= 2]
        if not groups:
            continue
        mine = [r for v in by_cond[cname].values() for r in v]
        tail = f"   {np.median([r['seconds'] for r in mine]):6.1f}  {max(r['load'] for r in mine):.2f}"
        for phase in PHASES:
            for sname, stat in STATS.items():
                print(_row(f"{cname:10} {phase:8} {sname}", _spreads([[r[phase] for r in g] for g in groups], stat),
                           tail))
    print("\nfewer timed repeats (the first k of each measurement's repeats; p50):\n" + head)
    for cname in (c for c in conditions if c in by_cond):
        groups = [[[r[p] for r in v] for v in by_cond[cname].values() if len(v) >= 2] for p in PHASES]
        n_rep = min(len(x) for g in groups for v in g for x in v) if groups[0] else 0
        for k in sorted({3, 5, 10, n_rep} - {0}):
            if k <= n_rep:
                for phase, g in zip(PHASES, groups):
                    print(_row(f"{cname:10} {phase:8} first {k}", _spreads(g, statistics.median, k)))
    print("\nnormalized by the probe taken with the round (p50 x probe / the default rounds' median probe, "
          "as the latency model normalizes):\n" + head)
    ref = {w: np.median([r["probe"][w] for v in by_cond.get("default", {}).values() for r in v] or [1.0])
           for w in SPEED.values()}
    for cname in (c for c in conditions if c in by_cond):
        groups = [v for v in by_cond[cname].values() if len(v) >= 2]
        for phase in PHASES if groups else ():
            w = SPEED[phase]
            print(_row(f"{cname:10} {phase:8} p50 norm.", np.array(
                [max(x) / min(x) - 1 for x in ([statistics.median(r[phase]) * r["probe"][w] / ref[w] for r in g]
                                               for g in groups)])))
    base = by_cond.get("default")
    if base:
        print("\nlevel against default (median over sub-networks of condition / default, p50) and the probe:")
        for cname in (c for c in conditions if c in by_cond and c != "default"):
            keys = sorted(set(by_cond[cname]) & set(base))
            line = f"{cname:10}"
            for phase in PHASES:
                ratio = [statistics.median([statistics.median(r[phase]) for r in by_cond[cname][k]])
                         / statistics.median([statistics.median(r[phase]) for r in base[k]]) for k in keys]
                line += f" {phase} x{np.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})"
            for what in ("bandwidth_gbs", "peak_gflops"):
                now = np.median([r["probe"][what] for v in by_cond[cname].values() for r in v])
                was = np.median([r["probe"][what] for v in base.values() for r in v])
                line += f"  probe {what} x{now / was:.3f}"
            print(line)
            line = f"{'':10}"
            for phase in PHASES:  # the same, each measurement normalized by its round's probe
                w = SPEED[phase]
                ratio = [statistics.median([statistics.median(r[phase]) * r["probe"][w] for r in by_cond[cname][k]])
                         / statistics.median([statistics.median(r[phase]) * r["probe"][w] for r in base[k]])
                         for k in keys]
                line += f" {phase} x{np.median(ratio):.3f} ({min(ratio):.3f}-{max(ratio):.3f})"
            print(line + "  normalized by the probe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--conditions", nargs="+", default=["default", "pin", "hugepages", "long", "hog"],
                    choices=list(CONDITIONS))
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", default="noise.jsonl")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    quiet_libraries()
    out = Path(args.out)
    if not args.report_only:
        if "thp" in args.conditions and not os.access(THP, os.W_OK):
            ap.error(f"condition thp needs write access to {THP}")
        print(f"{platform.processor() or platform.machine()}, affinity {sorted(os.sched_getaffinity(0))}, "
              f"THP {THP.read_text().strip() if THP.exists() else '?'}, load average {os.getloadavg()[0]:.2f}")
        space = SearchSpace.packaged(args.model, num_layers=30, intermediate_size=1536)
        subs = sample_subnets(space, args.n, seed=args.seed, extremes=False)
        measure(args, subs, out)
    report(out, args.conditions)
    print(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()

"""Evaluation cost on SmolLM2-135M: a naive loop (one full forward with the full LM head per choice)
vs hwnas's packed scorer on the same items, per task; then the total for one sub-network on
4 tasks x 100 items (ARC-e, ARC-c, WinoGrande, TruthfulQA-MC1). Prints medians of --repeats.

    taskset -c 0 python tools/bench_eval.py [--threads 1] [--items 20] [--limit 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.evaluate import Evaluator
from hwnas.evaluate.scoring import naive_loglikelihoods
from hwnas.model import load_model
from hwnas.modeling import parameter_count
from hwnas.supernet import Supernet

PER_ITEM_TASKS = ("arc_easy", "arc_challenge", "winogrande", "truthfulqa_mc1", "mmlu", "hellaswag", "piqa",
                  "lambada_openai")
# A heterogeneous sub-network: two middle layers dropped, the middle MLPs narrowed.
SUBNET = {"layers": [i for i in range(30) if i not in (20, 21)], "mlp_widths": [1536] * 4 + [1280] * 20 + [1536] * 4}
SEARCH_TASKS = ("arc_easy", "arc_challenge", "winogrande", "truthfulqa_mc1")


def timed(fn, repeats: int) -> tuple[float, float, list[float]]:
    """Median wall seconds, median CPU seconds of this process, and every wall time. On a shared
    core the CPU time is what the run would take alone (one thread)."""
    runs, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(runs), statistics.median(cpu), runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--items", type=int, default=20, help="items per task for the naive-vs-hwnas comparison")
    ap.add_argument("--limit", type=int, default=100, help="items per task for the 4-task total")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tasks", default=",".join(PER_ITEM_TASKS))
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"conditions: torch {torch.__version__}, {args.threads} thread(s), CPU affinity {affinity}, "
          f"{os.cpu_count()} cores on the machine ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.2f}; fp32; medians of {args.repeats} (naive: 1 run)")
    base = load_model("smollm2-135m")
    model = base.model

    print(f"\n## per item, {args.items} items per task (seed 0), base model")
    print("seconds per item, wall (CPU time of this process in brackets)")
    print(f"{'task':16} {'naive s/item':>20} {'hwnas s/item':>20} {'speed-up':>8} {'max |dll|':>9}")
    for name in args.tasks.split(","):
        ev = Evaluator(base.tokenizer, [name], limit=args.items, seed=0)
        scorer = ev.tasks[name].scorer
        reqs = [r for it in scorer.items for r in it]
        refs: list = []
        t_naive, c_naive, _ = timed(lambda r=reqs, out=refs: out.append(naive_loglikelihoods(model, r)), 1)
        ref = refs[0]
        t_hw, c_hw, _ = timed(lambda s=scorer: s.run(model), args.repeats)
        got = [x for it in scorer.run(model) for x in it]
        d = max(abs(a.ll - b.ll) for a, b in zip(got, ref))
        n = len(scorer.items)
        print(f"{name:16} {t_naive / n:>10.3f} ({c_naive / n:6.3f}) {t_hw / n:>10.3f} ({c_hw / n:6.3f}) "
              f"{c_naive / c_hw:>7.1f}x {d:>9.1e}", flush=True)

    sn = Supernet(base)
    sub = sn.materialize(sn.parse_subnet(SUBNET), share_weights=True)
    t0 = time.perf_counter()
    ev = Evaluator(base.tokenizer, SEARCH_TASKS, limit=args.limit, seed=0)
    t_prep = time.perf_counter() - t0
    print(f"\n## one sub-network ({len(SUBNET['layers'])} layers, {parameter_count(sub):,} parameters), "
          f"{len(SEARCH_TASKS)} tasks x {args.limit} items")
    print(f"prepare once (read, sample, tokenize, pack): {t_prep:.2f} s")
    results = []
    t_eval, c_eval, runs = timed(lambda: results.append(ev.evaluate(sub)), args.repeats)
    res = results[-1]
    for name, tr in res.tasks.items():
        tokens = sum(len(p.tokens) for p in ev.tasks[name].scorer.packs)
        print(f"  {name:16} {tr.seconds:6.1f} s  {tokens:6d} input tokens  {tr.metric}={tr.value:.3f}")
    print(f"total evaluate(): median {t_eval:.1f} s wall, {c_eval:.1f} s CPU (wall runs: "
          f"{', '.join(f'{r:.1f}' for r in runs)}); goal <= 60 s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""LINAS vs plain NSGA-II vs random search on SmolLM2-135M, and the inner NSGA-II's speed.

Real accuracy objective: WikiText-2 test perplexity on a fixed slice (cheap, deterministic);
cost objective: decode ms/token predicted by a fitted latency model (default) or the parameter count.
Each algorithm gets the same budget of real evaluations and 3 seeds; hypervolumes are normalised
against a reference front from a long NSGA-II run. Real evaluations are deterministic, so one cache
of (sub-network -> perplexity) serves every run (the store still records every evaluation).

    python tools/bench_search.py inner [--latency-model DIR]
    python tools/bench_search.py compare [--latency-model DIR] [--budget 250] [--reference 5000]
    python tools/bench_search.py kill [--latency-model DIR] [--kills 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.search import LinasConfig, Objective, RunConfig, Search, hypervolume, pareto_mask

WORK = Path("bench-search")


def config(args: argparse.Namespace, algorithm: str, seed: int, budget: int) -> RunConfig:
    cost = "decode_ms_per_token" if args.latency_model else "params"
    initial = 50 if algorithm == "linas" else budget
    rounds = max(1, (budget - initial) // 50)
    return RunConfig(objectives=[Objective("wikitext2.ppl"), Objective(cost)], tasks=["wikitext2"],
                     ppl_windows=args.ppl_windows, ppl_window=args.ppl_window, latency_model=args.latency_model,
                     linas=LinasConfig(initial=initial, rounds=rounds, per_round=50 if algorithm == "linas" else 0,
                                       inner_evaluations=args.inner, population=100),
                     algorithm=algorithm, seed=seed)


def make_search(args, algorithm, seed, budget, sn, evaluator, cache, name):
    from hwnas.outdir import remove_own

    run_dir = WORK / name
    remove_own(run_dir, "search", legacy=("evaluations.jsonl",))
    return Search(config(args, algorithm, seed, budget), run_dir, supernet=sn, evaluator=evaluator,
                  metrics_cache=cache)


def cmd_inner(args: argparse.Namespace, sn, evaluator) -> None:
    from pymoo.optimize import minimize

    from hwnas.search import PredictedProblem, nsga2

    s = make_search(args, "linas", 0, 60, sn, evaluator, {}, "inner")
    rng = random.Random(0)
    for sub in s.random_new(60, rng, set(s.store.keys)):
        s.evaluate(sub, 0)
    predictors = s.fit_predictors(s.store.records)
    problem = PredictedProblem(s, predictors)
    for n in (args.inner,):
        times = []
        for rep in range(3):
            t0 = time.perf_counter()
            minimize(problem, nsga2(s.cfg.linas), ("n_evals", n), seed=rep, verbose=False)
            times.append(time.perf_counter() - t0)
        kinds = {m: p.kind for m, p in predictors.items()}
        print(f"inner NSGA-II, {n} predicted evaluations (pop 100, predictor {kinds}, cost "
              f"{s.cfg.objectives[1].metric}): median {np.median(times):.2f} s over 3 runs ({times})")


def objectives(search: Search, recs: list[dict]) -> np.ndarray:
    """(ppl, cost) of stored records, the cost re-predicted with the search's current latency model,
    so runs stored under different versions of the latency model are scored alike."""
    from hwnas.subnet import Subnet

    f = search.objective_matrix(recs)
    if search.latencies and recs:
        subs = [Subnet.from_dict(r["subnet"]) for r in recs]
        f[:, 1] = search.latency_of(subs)[search.cfg.objectives[1].metric]
    return f


def front_hv(search: Search, ideal: np.ndarray, nadir: np.ndarray, recs: list[dict] | None = None) -> float:
    return hypervolume(objectives(search, search.store.records if recs is None else recs), ideal, nadir)


def cmd_compare(args: argparse.Namespace, sn, evaluator) -> None:
    cache: dict = {}
    cache_file = WORK / "metrics_cache.json"
    if cache_file.is_file():
        cache.update(json.loads(cache_file.read_text()))
    t0 = time.perf_counter()
    ref_store = WORK / "reference" / "evaluations.jsonl"
    if ref_store.is_file() and sum(1 for _ in ref_store.open()) >= args.reference + 1:  # finished earlier: reuse
        ref = Search(config(args, "nsga2", 123, args.reference), WORK / "reference", supernet=sn, evaluator=evaluator,
                     metrics_cache=cache)
        print(f"reference: NSGA-II with {args.reference} real evaluations (reused from {ref_store})")
    else:
        ref = make_search(args, "nsga2", 123, args.reference, sn, evaluator, cache, "reference")
        ref.run()
        cache_file.write_text(json.dumps(cache))
        print(f"reference: NSGA-II with {args.reference} real evaluations ({time.perf_counter() - t0:.0f} s)")
    runs = {}
    for algorithm in ("linas", "nsga2", "random"):
        for seed in range(3):
            t1 = time.perf_counter()
            s = make_search(args, algorithm, seed, args.budget, sn, evaluator, cache, f"{algorithm}-{seed}")
            s.run()
            runs[(algorithm, seed)] = s
            cache_file.write_text(json.dumps(cache))
            print(f"  {algorithm} seed {seed}: {s.spent} evaluations ({time.perf_counter() - t1:.0f} s)", flush=True)
    all_f = np.concatenate([objectives(ref, ref.store.records)]
                           + [objectives(s, s.store.records) for s in runs.values()])
    ideal, nadir = all_f.min(0), all_f.max(0)
    ref_front = objectives(ref, ref.store.records)
    ref_front = ref_front[pareto_mask(ref_front)]
    hv_ref = hypervolume(ref_front, ideal, nadir)
    print(f"\nhypervolume (normalised to the union's ideal/nadir; reference front {len(ref_front)} points: "
          f"{hv_ref:.4f})")
    print(f"{'algorithm':10} {'budget':>6} {'HV seed0':>9} {'seed1':>7} {'seed2':>7} {'mean % of ref':>14}")
    for algorithm in ("linas", "nsga2", "random"):
        hvs = [front_hv(runs[(algorithm, sd)], ideal, nadir) for sd in range(3)]
        print(f"{algorithm:10} {args.budget:>6} {hvs[0]:>9.4f} {hvs[1]:>7.4f} {hvs[2]:>7.4f} "
              f"{100 * np.mean(hvs) / hv_ref:>13.1f}%")
    # sample efficiency: evaluations each needs to reach LINAS's final HV
    print("\nLINAS hypervolume after each round (mean of 3 seeds):")
    for i in range(len(runs[("linas", 0)].hv_history)):
        vals = []
        for sd in range(3):
            s = runs[("linas", sd)]
            n = s.hv_history[i][0]
            recs = [r for r in s.store.records if r["index"] < n + 1]
            vals.append(front_hv(s, ideal, nadir, recs))
        print(f"  after {runs[('linas', 0)].hv_history[i][0]:>4} evaluations: {100 * np.mean(vals) / hv_ref:.1f}% of ref")


def cmd_kill(args: argparse.Namespace) -> None:
    """Start `hwnas search` as a subprocess, SIGKILL it at random moments, resume each time."""
    from hwnas.outdir import remove_own

    run_dir = WORK / "killed"
    remove_own(run_dir, "search", legacy=("evaluations.jsonl",))
    cfg = config(args, "linas", 7, 120).to_dict()
    cfg["linas"]["initial"], cfg["linas"]["rounds"], cfg["linas"]["per_round"] = 40, 2, 40
    cfg_file = WORK / "kill.yaml"
    WORK.mkdir(exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(cfg))
    rng = random.Random(42)
    cmd = [sys.executable, "-m", "hwnas.cli", "search", "--config", str(cfg_file), "--run-dir", str(run_dir),
           "--resume"]
    for k in range(args.kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait = rng.uniform(20, 60)
        time.sleep(wait)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n = sum(1 for _ in (run_dir / "evaluations.jsonl").open()) if (run_dir / "evaluations.jsonl").exists() else 0
        print(f"kill -9 #{k + 1} after {wait:.0f} s: {n} lines in the store")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = (run_dir / "evaluations.jsonl").read_text().splitlines()
    keys = []
    bad = 0
    for line in lines:
        try:
            keys.append(json.dumps(json.loads(line)["subnet"], sort_keys=True))
        except json.JSONDecodeError:
            bad += 1
    print(f"final store: {len(lines)} lines, {len(keys)} records, {len(set(keys))} distinct sub-networks, "
          f"{bad} cut lines; expected {cfg['linas']['initial'] + 2 * 40 + 1} (budget + base)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("inner", "compare", "kill"))
    ap.add_argument("--latency-model", default=None)
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--reference", type=int, default=5000)
    ap.add_argument("--inner", type=int, default=20000)
    ap.add_argument("--ppl-windows", type=int, default=1)
    ap.add_argument("--ppl-window", type=int, default=256)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    WORK.mkdir(exist_ok=True)
    print(f"threads {args.threads}, affinity {sorted(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}")
    if args.cmd == "kill":
        cmd_kill(args)
        return
    from hwnas.evaluate import Evaluator
    from hwnas.supernet import open_supernet

    sn = open_supernet("smollm2-135m")
    evaluator = Evaluator(sn.base.tokenizer, ["wikitext2"], ppl_windows=args.ppl_windows, ppl_window=args.ppl_window)
    {"inner": cmd_inner, "compare": cmd_compare}[args.cmd](args, sn, evaluator)


if __name__ == "__main__":
    main()

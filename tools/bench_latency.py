"""Latency model figures: held-out validation (LightGBM vs the plain lookup-table sum) and batch
prediction throughput.

    python tools/bench_latency.py --latency-model LM_DIR [--n 30] [--throughput 100000]

Validation measures fresh random sub-networks of the default space with `hwnas bench`'s path (kept in
LM_DIR/validation.jsonl, so a re-run re-uses them) and compares both predictors with them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.latency import LatencyModel, sample_subnets, subnet_arrays, validate
from hwnas.space import SearchSpace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-model", required=True)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--throughput", type=int, default=100_000)
    args = ap.parse_args()
    quiet_libraries()
    lm = LatencyModel.load(args.latency_model)
    h = lm.header
    space = SearchSpace.packaged("smollm2-135m", num_layers=30, intermediate_size=1536)
    print(f"latency model {args.latency_model}: backend {h['backend']}, device {h['device_slug']}, "
          f"{h['samples']} training sub-networks, targets "
          + ", ".join(f"{t} ({v['mode']}; CV MAPE " + " / ".join(f"{m} {e:.1%}" for m, e in v["cv_mape"].items()) + ")"
                      for t, v in h["targets"].items()))
    print(f"affinity {sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}\n")
    rep = validate(lm, space, n=args.n)
    print(f"{rep['n']} held-out sub-networks (never trained on), measured on {rep['backend']} "
          f"(prefill {h['bench']['prefill']} tokens, decode {h['bench']['decode']} tokens, batch {h['bench']['batch']}):")
    print(f"{'target':22} {'predictor':9} {'within 5%':>9} {'within 10%':>10} {'MAPE':>7} {'Kendall tau':>11}")
    for t, stats in rep["per_target"].items():
        for name, s in stats.items():
            print(f"{t:22} {name:9} {s['within_5pct']:>9.0%} {s['within_10pct']:>10.0%} {s['mape']:>7.2%} "
                  f"{s['kendall_tau']:>11.3f}")
    subs = sample_subnets(space, 2000, seed=5, extremes=False)
    keep, widths = subnet_arrays(subs, 30)
    reps = max(1, args.throughput // len(subs))
    keep, widths = np.tile(keep, (reps, 1)), np.tile(widths, (reps, 1))
    print(f"\nbatch prediction, {len(keep):,} sub-networks, 1 thread (median of 3):")
    for targets in (["decode_ms_per_token"], list(h["targets"])):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            lm.predict_arrays(keep, widths, targets=targets)
            times.append(time.perf_counter() - t0)
        dt = float(np.median(times))
        print(f"  {'+'.join(targets):45} {dt:.2f} s = {len(keep) / dt:,.0f} sub-networks/s")


if __name__ == "__main__":
    main()

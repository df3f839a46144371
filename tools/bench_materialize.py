"""Materialization time for 10 random sub-networks of SmolLM2-135M: in memory (copying and
weight-sharing) and to disk (save_pretrained + tokenizer). Prints medians and every run.

    python tools/bench_materialize.py [--model smollm2-135m] [--n 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.model import load_model
from hwnas.modeling import parameter_count
from hwnas.supernet import Supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    quiet_libraries()
    base = load_model(args.model)
    print(f"model {args.model}: loaded in {base.load_seconds:.2f} s, {base.num_parameters:,} parameters")
    sn = Supernet(base)
    space = sn.default_space()
    rng = random.Random(args.seed)
    subnets = [sn.parse_subnet(space.sample(rng), space=space) for _ in range(args.n)]
    sn.materialize(subnets[0])  # touch the base weights once (they are memory-mapped after a load)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(subnets):
            t0 = time.perf_counter()
            m = sn.materialize(s)
            t_copy = time.perf_counter() - t0
            t0 = time.perf_counter()
            sn.materialize(s, share_weights=True)
            t_share = time.perf_counter() - t0
            t0 = time.perf_counter()
            sn.save_subnet(s, f"{tmp}/s{i}", model=m)
            t_disk = time.perf_counter() - t0
            rows.append((s.depth, parameter_count(m), t_copy, t_share, t_disk))
    print(f"{'#':>2} {'depth':>5} {'params':>12} {'memory copy s':>13} {'memory shared s':>15} {'to disk s':>9}")
    for i, (d, p, a, b, c) in enumerate(rows):
        print(f"{i:>2} {d:>5} {p:>12,} {a:>13.3f} {b:>15.3f} {c:>9.3f}")
    for name, col in (("in memory (copy)", 2), ("in memory (shared)", 3), ("to disk", 4)):
        vals = [r[col] for r in rows]
        print(f"median {name}: {statistics.median(vals):.3f} s (min {min(vals):.3f}, max {max(vals):.3f})")


if __name__ == "__main__":
    main()

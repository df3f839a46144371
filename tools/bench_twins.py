"""Byte-identical artifacts measured against each other: the floor under any A/B speed claim.

Measures each artifact folder given (copies of one artifact, at different paths) with
`hwnas.export.measure_artifact` (a clean worker each time, as `hwnas baselines` does), in
interleaved rounds with the order shuffled per round, and prints each one's decode medians, its
single measurements and peak memory. Equal files should measure equal; what they do not is noise.

    python tools/bench_twins.py ART_A ART_B [ART_C ...] [--rounds 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    from hwnas.export import FORMATS, measure_artifact, read_manifest
    from hwnas.fingerprint import cpu_model

    folders = [Path(p) for p in args.artifacts]
    dec: dict[Path, list[float]] = {f: [] for f in folders}
    mem: dict[Path, list[float]] = {f: [] for f in folders}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(folders)
        rng.shuffle(order)
        for f in order:
            m = measure_artifact(f, FORMATS[read_manifest(f)["format"]], prefill=128, decode=32)
            dec[f].append(m["decode_ms_per_token"])
            mem[f].append(m["peak_mem_mb"])
    print(f"# {cpu_model()}, 1 thread, {args.rounds} interleaved rounds, decode 32 tokens after 128")
    print("| artifact | decode median ms/token | single measurements | peak MB |")
    print("|---|---:|---|---|")
    for f in folders:
        print(f"| {f} | {statistics.median(dec[f]):.2f} | {', '.join(f'{x:.2f}' for x in dec[f])} | "
              f"{', '.join(f'{x:.0f}' for x in mem[f])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

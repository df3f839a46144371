"""Profile SmolLM2-135M's default space on each backend and print the wall time of each full profile.

Each backend profiles into a fresh folder with an empty graph cache, so the wall time includes
exporting/converting every operator graph. Run pinned to one core, e.g.
    taskset -c 1 python tools/bench_profile.py --backends onnxruntime openvino --out /tmp/profiles
Copy a folder to profiles/<device-slug>/<backend>/ to ship it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--out", default=None, help="parent folder of the profiles (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--goal-s", type=float, default=600)
    args = ap.parse_args()
    parent = Path(args.out or tempfile.mkdtemp(prefix="hwnas-profiles-"))
    rows = []
    for backend in args.backends:
        out = parent / backend
        from hwnas.outdir import remove_own

        remove_own(out, "profile")  # a profile this tool wrote before; anything else is refused
        env = dict(os.environ, HWNAS_GRAPH_CACHE=tempfile.mkdtemp(prefix=f"hwnas-graphs-{backend}-"))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hwnas.cli", "profile", "--model", args.model, "--backend",
                               backend, "--out", str(out), "--threads", str(args.threads), "--json"],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"{backend}: FAILED ({proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        summary = json.loads(proc.stdout)
        from hwnas.profile import DeviceProfile

        prof = DeviceProfile.load(out)
        loads = [r["load"] for r in prof.rows]
        rows.append((backend, wall, summary["rows"], summary["flagged_rows"], max(loads), sum(loads) / len(loads),
                     prof.header.get("device_slug"), out))
    print(f"\nfull-profile wall time, {args.model} default space, {args.threads} thread(s):")
    print(f"{'backend':<12} {'wall s':>7} {'goal':>5} {'rows':>5} {'flagged':>7} {'load max/mean':>14}  folder")
    for b, wall, n, flagged, lmax, lmean, slug, out in rows:
        ok = "ok" if wall <= args.goal_s else "MISS"
        print(f"{b:<12} {wall:7.0f} {ok:>5} {n:5d} {flagged:7d} {lmax:6.2f}/{lmean:<6.2f}  {out}  ({slug})")
    if rows:
        print("\nsample lookups (ms):")
        from hwnas.profile import DeviceProfile

        for b, *_rest, out in rows:
            p = DeviceProfile.load(out)
            full = p.sum_ops([1536] * 30, "decode", context=512)
            print(f"  {b}: attention decode@512 {p.lookup('attention', 'decode', context=512):.3f}, "
                  f"mlp-1536 prefill@128 {p.lookup('mlp', 'prefill', width=1536, tokens=128):.3f}, "
                  f"mlp-256 prefill@128 {p.lookup('mlp', 'prefill', width=256, tokens=128):.3f}, "
                  f"head decode {p.lookup('head', 'decode'):.3f}; sum of ops, full model decode@512: {full:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

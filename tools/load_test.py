"""Measuring honestly under load: quiet vs a memory-bandwidth hog on the other core.

    python tools/load_test.py [--model smollm2-135m] [--backend onnxruntime] [--rounds 3]

Pins hwnas to core 1 and, in the hogged runs, a bandwidth/compute hog (numpy streaming copies of
two 256 MB arrays plus a GEMM) to core 0. Interleaved rounds of `hwnas bench` on the base model:

- quiet:               nothing else running;
- hogged, accepted:    hog on, `--option max_load=99` (hwnas told to accept it): the skew itself;
- hogged, default:     hog on, default settings: what hwnas does about it (it must refuse);
- intermittent hog:    the hog runs in bursts (on 3 s, off 6 s), default settings: hwnas waits
                       and re-measures, and must end with figures within the quiet noise floor.

Then `hwnas profile` (a small grid on a random-weight model) with the hog on (refused, kept
incomplete) and again quiet (resumes, re-measures only the flagged rows). Prints a table of
medians per phase with their round-to-round spread, and what hwnas did, for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOG = r"""
import os, sys, time
import numpy as np
os.sched_setaffinity(0, {0})
a = np.ones(32 * 1024 * 1024); b = np.empty_like(a); m = np.ones((256, 256))
on, off = float(sys.argv[1]), float(sys.argv[2])
while True:
    t0 = time.time()
    while time.time() - t0 < on:
        np.copyto(b, a); np.copyto(a, b); m @ m
    if off:
        time.sleep(off)
"""


def hog(on: float = 1e9, off: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOG, str(on), str(off)])


def hwnas(argv: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "hwnas.cli", *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return p.returncode, p.stdout, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""


def bench(model: str, backend: str, options: list[str]) -> tuple[int, dict | None, str]:
    opts = [x for o in options for x in ("--option", o)]
    rc, out, err = hwnas(["bench", "--model", model, "--backend", backend, "--prefill", "128", "--decode", "32",
                          "--json", *opts])
    return rc, (json.loads(out) if rc == 0 else None), err


def spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    med = statistics.median(xs)
    return f"{med:.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-profile", action="store_true")
    args = ap.parse_args()
    print(f"cpu: {_cpu()}", flush=True)
    rc, _, err = hwnas(["bench", "--model", args.model, "--backend", args.backend, "--prefill", "8", "--decode", "2",
                        "--option", "max_load=99"])
    if rc:  # converts and caches the graph once, outside the timed rounds
        raise SystemExit(f"warm-up bench failed: {err}")
    cond = {"quiet": [], "hogged, accepted": [], "hogged, default": [], "intermittent hog": []}
    notes: dict[str, list[str]] = {k: [] for k in cond}
    for r in range(args.rounds):
        for name in cond:
            h = None
            if name.startswith("hogged"):
                h = hog()
            elif name == "intermittent hog":
                h = hog(3.0, 6.0)
            if h:
                time.sleep(1.0)
            try:
                rc, res, err = bench(args.model, args.backend, ["max_load=99"] if name == "hogged, accepted" else [])
            finally:
                if h:
                    h.kill()
                    h.wait()
            if rc == 0:
                cond[name].append(res)
                notes[name].append("measured")
            else:
                notes[name].append(f"exit {rc}: {err[:160]}")
            got = f"prefill {res['prefill_ms']:.2f} decode {res['decode_ms_per_token']:.3f}" if res else notes[name][-1]
            print(f"round {r} {name}: {got}", flush=True)
    quiet = cond["quiet"]
    qp = statistics.median([x["prefill_ms"] for x in quiet]) if quiet else float("nan")
    qd = statistics.median([x["decode_ms_per_token"] for x in quiet]) if quiet else float("nan")
    print(f"\nbench of {args.model} on {args.backend}, 1 thread, pinned to core 1; {args.rounds} interleaved rounds")
    print("| condition | prefill ms (min-max) | vs quiet | decode ms/token (min-max) | vs quiet | what hwnas did |")
    print("|---|---|---|---|---|---|")
    for name, res in cond.items():
        p = [x["prefill_ms"] for x in res]
        d = [x["decode_ms_per_token"] for x in res]
        vp = f"{statistics.median(p) / qp:.2f}x" if p else "-"
        vd = f"{statistics.median(d) / qd:.2f}x" if d else "-"
        did = "; ".join(sorted(set(n if n == "measured" else n.split(":")[0] + ": refused" for n in notes[name])))
        print(f"| {name} | {spread(p)} | {vp} | {spread(d)} | {vd} | {did} |")
    refusal = next((n for n in notes["hogged, default"] if n != "measured"), None)
    if refusal:
        print(f"\nrefusal message: {refusal}")
    if not args.skip_profile:
        profile_under_load()
    return 0


def profile_under_load() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    from chaos import make_model

    work = Path(tempfile.mkdtemp(prefix="hwnas-load-"))
    model = make_model(work / "model")
    out = work / "profile"
    argv = ["profile", "--model", str(model), "--backend", "torch", "--prefill", "8,16", "--decode", "16",
            "--out", str(out)]
    h = hog()
    time.sleep(1.0)
    t0 = time.perf_counter()
    try:
        rc, _, err = hwnas(argv)
    finally:
        h.kill()
        h.wait()
    t_hog = time.perf_counter() - t0
    import yaml

    head = yaml.safe_load((out / "profile.yaml").read_text()) if (out / "profile.yaml").is_file() else {}
    print(f"\nprofile with the hog on: exit {rc} after {t_hog:.0f} s, complete={head.get('complete')}, "
          f"flagged rows {head.get('flagged_rows')}\n  {err[:300]}")
    t0 = time.perf_counter()
    rc2, _, err2 = hwnas(argv + ["--json"])
    head = yaml.safe_load((out / "profile.yaml").read_text())
    print(f"profile re-run quiet: exit {rc2} after {time.perf_counter() - t0:.0f} s, complete={head.get('complete')}, "
          f"flagged rows {head.get('flagged_rows')}")


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        flags = next(line for line in out.splitlines() if line.startswith("Flags"))
        return f"{name}, {os.cpu_count()} cores, avx512_vnni={'avx512_vnni' in flags}"
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

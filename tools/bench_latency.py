"""Latency model figures: held-out validation (LightGBM vs the plain lookup-table sum) and batch
prediction throughput.

    python tools/bench_latency.py --latency-model LM_DIR [--n 30] [--rounds 1] [--throughput 100000]
                                  [--condition hog|share --copy-to DIR]
    python tools/bench_latency.py --noise PROFILE_DIR [--n 6] [--rounds 3] [--subnets S.json] [--out F]

Validation measures fresh random sub-networks of the default space with `hwnas bench`'s path (kept in
LM_DIR/validation.jsonl, so a re-run re-uses them) and compares both predictors with them; with
--rounds >= 2 each is measured that many times (interleaved) and the round-to-round repeatability is
printed too. --noise measures only that repeatability (the ceiling for any predictor), for sub-networks
of the default space (or a JSON list of them) on the backend of a device profile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import yaml

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.latency import (
    LatencyModel,
    LatencyModelError,
    check_same_device,
    measure_samples,
    repeatability,
    sample_subnets,
    score_lines,
    subnet_arrays,
    validate,
)
from hwnas.profile import DeviceProfile
from hwnas.space import SearchSpace
from hwnas.subnet import Subnet


def _print_noise_floor(rep: dict | None) -> None:
    if rep:
        print("round 2 as a prediction of round 1 (the noise floor):")
        print("\n".join(score_lines({t: {"re-meas.": s} for t, s in rep.items()})))


def noise(args: argparse.Namespace, space: SearchSpace) -> None:
    prof = DeviceProfile.load(args.noise)
    try:
        speed = check_same_device(prof)
    except LatencyModelError as exc:  # repeatability does not depend on the profile's speed: report, go on
        speed = str(exc).split(". Another host")[0]
    if args.subnets:
        subs = [Subnet.from_dict(d) for d in json.loads(open(args.subnets).read())]
    else:
        subs = sample_subnets(space, args.n, seed=args.seed, extremes=False)
    out = args.out or f"noise-{prof.backend}.jsonl"
    print(f"{len(subs)} sub-networks x {args.rounds} rounds on {prof.backend} (one worker process per measurement, "
          f"rounds interleaved) -> {out}; speed check {speed}")
    t0 = time.perf_counter()
    recs = measure_samples(Path(out), subs, prof, prefill=128, decode=32, batch=1, rounds=args.rounds,
                           progress=lambda i, n: print(f"  {i}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True))
    print(f"{'#':>2} {'prefill ms per round':40} {'decode ms/token per round':34} in-process CV p/d  load")
    for i, r in enumerate(recs):
        v = r.get("round_values") or {t: [r[t]] for t in ("prefill_ms", "decode_ms_per_token")}
        print(f"{i:2} {' '.join(f'{x:7.1f}' for x in v['prefill_ms']):40} "
              f"{' '.join(f'{x:6.2f}' for x in v['decode_ms_per_token']):34} "
              f"{r['cv_prefill']:.3f}/{r['cv_decode']:.3f}  {r['load']:.2f}")
    for t in ("prefill_ms", "decode_ms_per_token"):
        spreads = [max(r["round_values"][t]) / min(r["round_values"][t]) - 1 for r in recs if "round_values" in r]
        if spreads:
            print(f"{t}: max/min over rounds - 1: median {np.median(spreads):.1%}, worst {max(spreads):.1%}")
    rep = repeatability(recs)
    _print_noise_floor(rep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-model")
    ap.add_argument("--noise", metavar="PROFILE_DIR", help="measure only the round-to-round repeatability")
    ap.add_argument("--n", type=int, default=None, help="sub-networks (default 30; 6 with --noise)")
    ap.add_argument("--rounds", type=int, default=None, help="measurements per sub-network (interleaved)")
    ap.add_argument("--subnets", help="--noise: a JSON list of sub-networks instead of random ones")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--space", help="a space YAML (e.g. a demo's joint space.yaml; default: the packaged one)")
    ap.add_argument("--out", help="--noise: measurements file (JSONL, resumable)")
    ap.add_argument("--skip-speed-check", action="store_true",
                    help="validation: measure even if the machine is off the profile's speed (--noise only reports it)")
    ap.add_argument("--throughput", type=int, default=100_000)
    ap.add_argument("--condition", choices=["hog", "share"],
                    help="validate under a condition of tools/bench_noise.py, the load check lifted: hog (a "
                         "memory-bandwidth hog on CPU 0) or share (a spinner on every CPU: half-speed cores): a model fitted quiet, predicting another machine "
                         "speed (with and without the speed normalization); use --copy-to so the quiet "
                         "validation.jsonl is not reused")
    ap.add_argument("--copy-to", help="validate a copy of the latency model and its profile made here "
                                      "(a second condition gets its own validation.jsonl)")
    args = ap.parse_args()
    quiet_libraries()
    space = (SearchSpace.load(args.space, num_layers=30, intermediate_size=1536) if args.space else
             SearchSpace.packaged("smollm2-135m", num_layers=30, intermediate_size=1536))
    print(f"affinity {sorted(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    if args.noise:
        args.n, args.rounds = args.n or 6, args.rounds or 3
        noise(args, space)
        return
    if not args.latency_model:
        ap.error("give --latency-model or --noise")
    if args.copy_to:
        lm_dir = Path(args.latency_model).resolve()
        prof_dir = (lm_dir / (yaml.safe_load((lm_dir / "latency_model.yaml").read_text())["profile_path"])).resolve()
        dest = Path(args.copy_to)
        if not (dest / "lm").is_dir():
            shutil.copytree(prof_dir, dest / "profile")
            shutil.copytree(lm_dir, dest / "lm", ignore=shutil.ignore_patterns("validation.jsonl"))
            hdr = yaml.safe_load((dest / "lm" / "latency_model.yaml").read_text())
            hdr["profile_path"] = "../profile"
            (dest / "lm" / "latency_model.yaml").write_text(yaml.safe_dump(hdr, sort_keys=False))
        args.latency_model = str(dest / "lm")
    lm = LatencyModel.load(args.latency_model)
    h = lm.header
    print(f"latency model {args.latency_model}: backend {h['backend']}, device {h['device_slug']}, "
          f"{h['samples']} training sub-networks, targets "
          + ", ".join(f"{t} ({v['mode']}; CV MAPE " + " / ".join(f"{m} {e:.1%}" for m, e in v["cv_mape"].items()) + ")"
                      for t, v in h["targets"].items()))
    cond = nullcontext()
    if args.condition:
        from bench_noise import condition

        os.environ["HWNAS_MAX_LOAD"] = "4"  # the other load is the point: measure through it
        cond = condition(args.condition)
    with cond:
        rep = validate(lm, space, n=args.n or 30, seed=args.seed, rounds=args.rounds,
                       speed_check=not args.skip_speed_check)
    if rep.get("speed_factor"):
        print(f"median probe / profile's figure over the measurements: {rep['speed_factor']}")
    print(f"{rep['n']} held-out sub-networks (never trained on), measured on {rep['backend']} "
          f"(prefill {h['bench']['prefill']} tokens, decode {h['bench']['decode']} tokens, batch {h['bench']['batch']}; "
          f"median of {rep['rounds']} round(s); speed check {rep['speed_check']}):")
    print("\n".join(score_lines(rep["per_target"])))
    _print_noise_floor(rep["repeatability"])
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

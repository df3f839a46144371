"""Whole sub-network benchmark table on every backend: SmolLM2-135M full and two sub-networks.

Prints prefill ms / decode ms per token / peak MB per backend and sub-network, checks that a
smaller sub-network is faster than the full model on every backend, and benches sub-network A a
second time in a separate process at the end to show run-to-run agreement (goal: within 5 %).
Run pinned to one core:  taskset -c 1 python tools/bench_backends.py
"""

from __future__ import annotations

import argparse
import sys
import time

SUBNETS = {
    "full": None,
    # 27 layers (18-20 dropped), MLP widths alternating 1536 / 1024: heterogeneous
    "A": {"layers": [i for i in range(30) if i not in (18, 19, 20)],
          "mlp_widths": [1536 if k % 2 == 0 else 1024 for k in range(27)]},
    # 24 layers (18-23 dropped), every MLP at 768
    "B": {"layers": [i for i in range(30) if not 18 <= i <= 23], "mlp_widths": [768] * 24},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino", "deepsparse"])
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-out", default=None, help="also write every BenchResult here")
    args = ap.parse_args()

    from hwnas.bench import bench_subnet
    from hwnas.measure.backend import backend_class

    backends = []
    for b in args.backends:
        ok, why = backend_class(b).available()
        if ok:
            backends.append(b)
        else:
            print(f"skipping {b}: {why}")
    results: dict[tuple[str, str], object] = {}
    t_all = time.perf_counter()

    def run(backend: str, name: str):
        t0 = time.perf_counter()
        r = bench_subnet(args.model, SUBNETS[name], backend, prefill=args.prefill, decode=args.decode,
                         threads=args.threads)
        print(f"  {backend:<12} {name:<5} prefill {r.prefill_ms:8.2f} ms  decode {r.decode_ms_per_token:7.2f} ms/tok"
              f"  peak {r.peak_mem_mb:6.0f} MB  cv {r.cv_prefill:.3f}/{r.cv_decode:.3f}  load {r.load:.2f}"
              f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        return r

    failed = []
    for backend in backends:
        try:
            for name in SUBNETS:
                results[(backend, name)] = run(backend, name)
        except Exception as exc:  # report and go on with the other backends
            print(f"  {backend}: FAILED: {str(exc).splitlines()[-1][:300]}", flush=True)
            failed.append(backend)
    backends = [b for b in backends if b not in failed]
    print("second run of sub-network A, each in a fresh process:", flush=True)
    again = {b: run(b, "A") for b in backends}

    print(f"\nSmolLM2-135M, prefill {args.prefill} tokens, decode {args.decode} tokens after it, batch 1, "
          f"{args.threads} thread(s); medians")
    print(f"{'backend':<12} {'subnet':<6} {'prefill ms':>10} {'decode ms/tok':>13} {'peak MB':>8} {'repeats':>7}"
          f" {'load':>5}")
    for (backend, name), r in results.items():
        print(f"{backend:<12} {name:<6} {r.prefill_ms:10.2f} {r.decode_ms_per_token:13.2f} {r.peak_mem_mb:8.0f}"
              f" {r.repeats:7d} {r.load:5.2f}")
    print("\nsmaller sub-network faster than the full model (prefill and decode):")
    all_ok = True
    for backend in backends:
        full = results[(backend, "full")]
        for name in ("A", "B"):
            r = results[(backend, name)]
            ok = r.prefill_ms < full.prefill_ms and r.decode_ms_per_token < full.decode_ms_per_token
            all_ok &= ok
            print(f"  {backend:<12} {name}: prefill {r.prefill_ms / full.prefill_ms:.2f}x, decode "
                  f"{r.decode_ms_per_token / full.decode_ms_per_token:.2f}x of full  {'ok' if ok else 'NOT FASTER'}")
    print("\nsame sub-network (A) twice, separate processes (goal: within 5 %):")
    for backend in backends:
        a, b = results[(backend, "A")], again[backend]
        dp = abs(b.prefill_ms - a.prefill_ms) / a.prefill_ms * 100
        dd = abs(b.decode_ms_per_token - a.decode_ms_per_token) / a.decode_ms_per_token * 100
        print(f"  {backend:<12} prefill {a.prefill_ms:.2f} vs {b.prefill_ms:.2f} ({dp:.1f} %), decode "
              f"{a.decode_ms_per_token:.2f} vs {b.decode_ms_per_token:.2f} ({dd:.1f} %)  "
              f"{'ok' if max(dp, dd) <= 5 else 'MISS'}")
    print(f"\nall smaller sub-networks faster: {all_ok}; total wall {time.perf_counter() - t_all:.0f} s")
    if args.json_out:
        from hwnas.fileio import write_json

        write_json(args.json_out, {"first": [r.to_dict() for r in results.values()],
                                   "second_A": [r.to_dict() for r in again.values()], "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every CPU artifact format for the base model and one searched sub-network: size, speed, verification.

For each variant (the full model and `--subnet`) this exports every format available here with
`hwnas.export.export` (which verifies against torch and measures on the format's own backend),
measures the torch fp32 base with `bench_subnet` as the reference, and prints one table:
size on disk, prefill ms (128 tokens), decode ms/token (32 steps after 128), peak memory, the
verification figures, decode speed-up over the torch fp32 base, and the decode roofline fraction
(weight bytes per token / measured bandwidth, over the measured decode time).

    python tools/bench_export.py --model smollm2-135m --subnet S.json [--formats onnx,onnx-int8] \
        [--base-formats onnx-int8] [--latency-model DIR] [--out bench-export] [--reuse]

`--subnet` also takes RUN_DIR#INDEX (an evaluation of a search run). `--reuse` keeps artifacts whose
manifest already exists (re-measuring nothing), so an interrupted table can be finished.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries

CPU_FORMATS = ("hf", "onnx", "onnx-int8", "openvino", "openvino-int8", "openvino-int4", "deepsparse")


def load_subnet(arg: str, shape: dict) -> dict:
    from hwnas.subnet import Subnet

    if "#" in arg:
        from hwnas.report import Run

        run_dir, idx = arg.rsplit("#", 1)
        rec = {r["index"]: r for r in Run.load(run_dir).records}[int(idx)]
        return Subnet.parse(rec["subnet"], source=arg, **shape)
    return Subnet.load(arg, **shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--subnet", required=True, help="sub-network JSON, or RUN_DIR#INDEX")
    ap.add_argument("--formats", default=",".join(CPU_FORMATS))
    ap.add_argument("--base-formats", default=None, help="formats for the full model (default: --formats)")
    ap.add_argument("--latency-model", default=None)
    ap.add_argument("--out", default="bench-export")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--sparsity", type=float, default=0.5, help="deepsparse format's target sparsity")
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)

    from hwnas.bench import bench_subnet
    from hwnas.export import FORMATS, export, read_manifest
    from hwnas.model import config_mlp_widths, load_config
    from hwnas.supernet import open_supernet

    print(f"threads {args.threads}, affinity {sorted(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}",
          flush=True)
    cfg = load_config(args.model)
    shape = {"num_layers": cfg.num_hidden_layers, "intermediate_size": config_mlp_widths(cfg)}
    sub = load_subnet(args.subnet, shape)
    sn = open_supernet(args.model)
    full = sn.parse_subnet({"layers": list(range(cfg.num_hidden_layers)), "mlp_widths": shape["intermediate_size"]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    torch_ref = {}
    for name, s in (("base", full), ("searched", sub)):
        t0 = time.perf_counter()
        b = bench_subnet(args.model, None if name == "base" else s.to_dict(), "torch", threads=args.threads)
        torch_ref[name] = b
        rows.append({"variant": name, "format": "torch (in memory)", "size_mb": None, "prefill_ms": b.prefill_ms,
                     "decode": b.decode_ms_per_token, "peak": b.peak_mem_mb, "verif": "reference", "roof": None,
                     "pred": None})
        print(f"{name} torch fp32: prefill {b.prefill_ms} ms, decode {b.decode_ms_per_token} ms/token "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        formats = args.base_formats if name == "base" and args.base_formats else args.formats
        for fmt in formats.split(","):
            if fmt not in FORMATS:
                raise SystemExit(f"unknown format {fmt}")
            folder = out / f"{name}-{fmt}"
            t0 = time.perf_counter()
            if args.reuse and (folder / "manifest.json").is_file():
                m = read_manifest(folder)
            else:
                m = export(sn, s, fmt, folder, options={"group_size": 64, "sparsity": args.sparsity},
                           latency_model=args.latency_model, threads=args.threads,
                           progress=lambda msg, f=fmt: print(f"  [{f}] {msg}", flush=True))
            v, ms = m["verification"], m["measured"] or {}
            verif = (f"max|d| {v['max_abs_diff']:.1e} cos {v['cosine']:.4f} top1 {v['top1_agreement']:.1%} "
                     f"ppl {v['ppl_torch']:.2f}->{v['ppl_artifact']:.2f}")
            rows.append({"variant": name, "format": fmt, "size_mb": m["size_mb"], "prefill_ms": ms.get("prefill_ms"),
                         "decode": ms.get("decode_ms_per_token"), "peak": ms.get("peak_mem_mb"), "verif": verif,
                         "roof": m["roofline"].get("decode_fraction_of_bound"),
                         "pred": (m.get("predicted") or {}).get("decode_ms_per_token")})
            print(f"  {name} {fmt}: {json.dumps(rows[-1])} ({time.perf_counter() - t0:.0f} s)", flush=True)

    base_decode = torch_ref["base"].decode_ms_per_token
    print(f"\nartifacts of {args.model} (searched = {sub.to_dict()})")
    print(f"decode speed-up is against the torch fp32 base ({base_decode} ms/token); roofline = bound / measured; "
          f"load at end {os.getloadavg()[0]:.2f}\n")
    print("| variant | format | size MB | prefill ms | decode ms/token | x torch fp32 base | peak MB | "
          "roofline | verification (vs torch fp32 of the same sub-network) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{base_decode / r['decode']:.2f}x" if r["decode"] else "-"
        roof = f"{r['roof']:.0%}" if r["roof"] else "-"
        print(f"| {r['variant']} | {r['format']} | {r['size_mb'] or '-'} | {r['prefill_ms']} | {r['decode']} | {speed} "
              f"| {r['peak']} | {roof} | {r['verif']} |")


if __name__ == "__main__":
    main()

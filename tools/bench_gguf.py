"""GGUF artifacts in llama.cpp beside ONNX Runtime and OpenVINO INT8 of the same networks, one run.

For the base model and one searched heterogeneous sub-network (its architecture: the per-layer
MLP widths and kept layers, without any weight formats it was searched with), export every format
with `hwnas export`'s own path, score each through its own runtime on the same held-out WikiText-2
windows, and measure all of them interleaved in rounds (clean worker per point, order shuffled per
round). Prints size, prefill (ms for 128 tokens), decode (ms/token), the decode roofline bound's
fraction (weight bytes / streaming bandwidth, over the measured decode), perplexity vs torch, and
top-1 agreement with the torch sub-network from the export's verification.

    python tools/bench_gguf.py --subnet-from /tmp/demo/run --index 32 --out /tmp/gguf-bench
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

FORMATS = ["onnx", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "onnx-int8", "openvino-int8"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--subnet", help="sub-network JSON (its architecture is used)")
    ap.add_argument("--subnet-from", help="a search run folder: take the front point --index")
    ap.add_argument("--index", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()

    from hwnas.baselines import artifact_perplexity, heldout_windows, torch_perplexity
    from hwnas.export import FORMATS as REGISTRY
    from hwnas.export import export, measure_artifact
    from hwnas.fingerprint import measure_roofline
    from hwnas.outdir import claim_dir
    from hwnas.subnet import Subnet
    from hwnas.supernet import open_supernet

    sn = open_supernet(args.model)
    if args.subnet:
        searched = Subnet.from_dict(json.loads(Path(args.subnet).read_text()))
    else:
        front = json.loads((Path(args.subnet_from) / "front.json").read_text())["front"]
        searched = Subnet.from_dict(next(p["subnet"] for p in front if p["index"] == args.index))
    searched = searched.architecture
    nets = {"base": sn.full_subnet(), "searched": searched}
    out = claim_dir(args.out, "baselines")
    windows = heldout_windows(sn.base.tokenizer, args.windows, args.window)
    points = []
    for net, subnet in nets.items():
        tppl = torch_perplexity(sn.materialize(subnet.architecture, share_weights=True), windows)
        for fmt in args.formats.split(","):
            folder = out / f"{net}-{fmt}"
            print(f"exporting {folder.name}", file=sys.stderr, flush=True)
            m = export(sn, subnet, fmt, folder, measure=False)
            ppl = artifact_perplexity(folder, windows)
            points.append({"net": net, "format": fmt, "folder": folder, "size_mb": m["size_mb"], "ppl": ppl,
                           "ppl_torch": tppl, "top1": m["verification"]["top1_agreement"],
                           "bound_bytes": m["roofline"]["weight_bytes"], "prefill": [], "decode": [], "load": []})
    rng = random.Random(0)
    bandwidth = []
    for rnd in range(args.rounds):
        bandwidth.append(measure_roofline()["bandwidth_gbs"])
        order = list(points)
        rng.shuffle(order)
        for i, p in enumerate(order):
            print(f"round {rnd + 1}: {p['net']}-{p['format']} ({i + 1}/{len(order)})", file=sys.stderr, flush=True)
            ms = measure_artifact(p["folder"], REGISTRY[p["format"]], options={"repeats": args.repeats})
            p["prefill"].append(ms["prefill_ms"])
            p["decode"].append(ms["decode_ms_per_token"])
            p["load"].append(ms["load"])
    bw = statistics.median(bandwidth)
    ref = {p["net"]: p for p in points if p["format"] == "onnx"}
    print(f"streaming bandwidth {bw:.1f} GB/s (rounds: {', '.join(f'{b:.1f}' for b in bandwidth)}); 1 thread; "
          f"{args.rounds} interleaved rounds; ppl on {args.windows}x{args.window} held-out WikiText-2 tokens")
    print(f"searched sub-network: {len(searched.layers)} layers, MLP widths "
          f"{dict(sorted(((w, searched.mlp_widths.count(w)) for w in set(searched.mlp_widths)), reverse=True))}")
    print("| network | format | size MB | prefill ms | decode ms/token | decode vs onnx fp32 (per round) "
          "| bound fraction | ppl (torch) | top-1 vs torch | other load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        dec, pre = statistics.median(p["decode"]), statistics.median(p["prefill"])
        r = ref.get(p["net"])
        ratios = [a / b for a, b in zip(r["decode"], p["decode"])] if r else []
        ratio = (f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-")
        frac = p["bound_bytes"] / (bw * 1e9) * 1e3 / dec
        print(f"| {p['net']} | {p['format']} | {p['size_mb']:.1f} | {pre:.1f} | {dec:.2f} | {ratio} | {frac:.2f} "
              f"| {p['ppl']:.2f} ({p['ppl_torch']:.2f}) | {p['top1']:.3f} | {max(p['load']):.2f} |")
    rows = [{k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()} for p in points]
    (out / "gguf_bench.json").write_text(json.dumps({"bandwidth_gbs": bandwidth, "points": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

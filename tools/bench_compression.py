"""Compressed sub-networks: does the torch simulation predict what the runtime computes?

    python tools/bench_compression.py parity [--backend onnxruntime] [--n 8] [--seed 0]
                                             [--ppl-windows 2 --ppl-window 256]
    python tools/bench_compression.py prompt ARTIFACT [ARTIFACT ...] [--prompt 128] [--ppl-window 512]

For `--n` sub-networks of the embedded model's space with compression genes (the full network all
8-bit — int8 on ONNX Runtime, q8_0 on llama.cpp; its 4 least influential layers dropped, all 8-bit;
width 1024 with attention fp32 and MLPs 8-bit; where the backend runs a 4-bit format (int4,
q4_0): the full network all 4-bit, with 4-bit MLPs and 8-bit attention, and with 8/4 bits drawn per
block; then every format the backend runs, per block, drawn
at random with random architectures), prints the fp32 torch perplexity, the simulated
perplexity (`hwnas.compression.simulate`, what the search scores) and the exported artifact's
perplexity through its own runtime (token by token through the KV cache, `hwnas baselines`'s
scoring), on the same held-out WikiText-2 windows, and the simulation's gap.

`prompt`: what a prompt's prefill does to an artifact's accuracy. Runtimes that quantize
activations at run time (ONNX Runtime's dynamic INT8) share one scale across all tokens of a
prefill, so the KV cache a prompt leaves is coarser than one built token by token. For each
artifact, the perplexity of the tokens after the first `--prompt` of each window, (a) every token
fed one at a time, (b) the first `--prompt` tokens as one prefill, then one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parity(args: argparse.Namespace) -> None:
    from hwnas.baselines import artifact_perplexity, heldout_windows, torch_perplexity
    from hwnas.compression import Compression, schemes_of, simulate
    from hwnas.export import export, searched_format
    from hwnas.fingerprint import cpu_model
    from hwnas.subnet import Subnet
    from hwnas.supernet import open_supernet

    sn = open_supernet("smollm2-135m")
    schemes = schemes_of(args.backend)
    eight = next(f for f, sc in sorted(schemes.items()) if sc.bits == 8)  # int8 (ORT), q8_0 (llama.cpp)
    space = dataclasses.replace(sn.default_space(), weight_formats=("fp32", *sorted(schemes)), compression_per="block")
    fmt = searched_format(args.backend)
    windows = heldout_windows(sn.base.tokenizer, args.ppl_windows, args.ppl_window)
    rng = random.Random(args.seed)
    full = sn.full_subnet()
    drop4 = Subnet.dropping(space, sn.order.layer_scores if sn.order else None, 4, sn.intermediate_size)
    w1024 = Subnet.dropping(space, None, 0, 1024)
    subnets = [full.compressed(Compression.uniform(eight, full.depth)),
               drop4.compressed(Compression.uniform(eight, drop4.depth)),
               w1024.compressed(Compression(("fp32",) * 30, (eight,) * 30, eight, eight))]
    four = next((f for f, sc in sorted(schemes.items()) if sc.bits == 4), None)  # int4 (ORT), q4_0 (llama.cpp)
    if four:  # what a search over 8- and 4-bit blocks ships: the full network, 4-bit in whole or in part
        d = full.depth
        subnets += [full.compressed(Compression.uniform(four, d)),
                    full.compressed(Compression((eight,) * d, (four,) * d, eight, eight)),
                    full.compressed(Compression(tuple(rng.choice((eight, four)) for _ in range(d)),
                                                tuple(rng.choice((eight, four)) for _ in range(d)), eight, four))]
    while len(subnets) < args.n:
        s = sn.parse_subnet(space.sample(rng), space)
        if s.compression is not None:
            subnets.append(s)
    print(f"# {args.backend} ({fmt}), {cpu_model()}, {len(windows)}x{len(windows[0])} held-out WikiText-2 tokens")
    print("| sub-network | formats | ppl fp32 (torch) | ppl simulated | ppl runtime | sim / runtime - 1 |")
    print("|---|---|---:|---:|---:|---:|")
    gaps = []
    for s in subnets:
        t0 = time.perf_counter()
        p32 = torch_perplexity(sn.materialize(s.architecture, share_weights=True), windows)
        psim = torch_perplexity(simulate(sn.materialize(s.architecture, share_weights=True), s.compression, schemes),
                                windows)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "artifact"
            export(sn, s, fmt, out, measure=False)
            prt = artifact_perplexity(out, windows)
        gap = psim / prt - 1
        gaps.append(gap)
        widths = sorted(set(s.mlp_widths))
        print(f"| {s.depth} layers, widths {widths[0]}-{widths[-1]} | {s.compression.summary()} | {p32:.2f} | "
              f"{psim:.2f} | {prt:.2f} | {gap:+.2%} |  ({time.perf_counter() - t0:.0f} s)", flush=True)
    absg = sorted(abs(g) for g in gaps)
    print(f"gap |sim/runtime - 1| over {len(gaps)} sub-networks: median {absg[len(absg) // 2]:.2%}, max {absg[-1]:.2%}")


def prompt(args: argparse.Namespace) -> None:
    import numpy as np

    from hwnas.baselines import heldout_windows
    from hwnas.export import _log_softmax, open_runtime, read_manifest, stream_logits
    from hwnas.model import load_model

    for folder in args.artifacts:
        m = read_manifest(folder)
        tok = load_model(m["source"]["model"]).tokenizer
        windows = heldout_windows(tok, args.ppl_windows, args.ppl_window)
        be, io = open_runtime(Path(folder), m)
        out = {}
        for mode, k in (("one at a time", 1), (f"prefill {args.prompt}", args.prompt)):
            nll, n = 0.0, 0
            for ids in windows:
                logits = stream_logits(be, io, ids, prompt=k).astype(np.float64)[args.prompt - k:]
                targets = ids[args.prompt:]
                nll -= float(_log_softmax(logits)[np.arange(len(targets)), targets].sum())
                n += len(targets)
            out[mode] = float(np.exp(nll / n))
        a, b = out.values()
        print(f"{folder} ({m['format']}): ppl of tokens {args.prompt}.. : " + ", ".join(
            f"{k} {v:.2f}" for k, v in out.items()) + f" ({b / a - 1:+.2%})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity", help="simulated vs runtime perplexity of compressed sub-networks")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-windows", type=int, default=2)
    p.add_argument("--ppl-window", type=int, default=256)
    q = sub.add_parser("prompt", help="perplexity after a prompt's prefill vs token by token")
    q.add_argument("artifacts", nargs="+")
    q.add_argument("--prompt", type=int, default=128)
    q.add_argument("--ppl-windows", type=int, default=2)
    q.add_argument("--ppl-window", type=int, default=512)
    args = ap.parse_args()
    {"parity": parity, "prompt": prompt}[args.cmd](args)


if __name__ == "__main__":
    main()

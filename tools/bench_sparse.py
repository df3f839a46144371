"""Sparse SmolLM2-135M (issue #19): one-shot pruning methods side by side, and what recovery buys.

    python tools/bench_sparse.py oneshot [--methods magnitude,wanda,sparsegpt] [--levels 0.3,0.5,0.7,2:4]
                                         [--arc-limit 0] [--out DIR]
        Prunes the base with each method at each level (hwnas.prune, Alpaca calibration) and prints
        WikiText-2 test perplexity (8 x 1024) and, with --arc-limit N (0: the full 2,376-item test
        set), ARC-Easy acc_norm with stderr. --out keeps each pruned model folder (for recover).
    python tools/bench_sparse.py score DIR [DIR ...] [--arc-limit 0]
        The same figures for model folders (hwnas prune / recover outputs, or the base's name).
    python tools/bench_sparse.py runtime --out DIR [--sparse LABEL=MODEL_DIR ...] [--rounds 3]
        Exports and measures, interleaved in rounds (1 thread, prefill 128, decode 32 at 128 of
        context): the dense base in DeepSparse (fp32, no zeros), the base magnitude-pruned to 50 % in
        DeepSparse, each --sparse model folder in DeepSparse, and the dense base as onnx-int8 and
        openvino-int8 beside them; perplexity (2 x 256 held-out WikiText-2) through each artifact.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.evaluate import Evaluator


def _levels(text: str) -> list[tuple[str, float]]:
    out = []
    for x in text.split(","):
        x = x.strip()
        out.append((x, 0.5) if ":" in x else ("unstructured", float(x)))
    return out


def _evaluator(tokenizer, arc_limit: int | None, data: str | None) -> tuple[Evaluator, Evaluator | None]:
    ppl = Evaluator(tokenizer, ["wikitext2"], ppl_windows=8, ppl_window=1024, data_dir=data)
    arc = None
    if arc_limit is not None:
        arc = Evaluator(tokenizer, ["arc_easy"], limit=arc_limit or None, data_dir=data)
    return ppl, arc


def _score(model, ppl: Evaluator, arc: Evaluator | None) -> dict:
    t0 = time.perf_counter()
    row = {"ppl": ppl.evaluate(model).tasks["wikitext2"].ppl}
    if arc is not None:
        r = arc.evaluate(model).tasks["arc_easy"]
        row.update(arc_norm=r.acc_norm, arc_stderr=r.stderr_norm, arc_items=r.n)
    row["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _line(name: str, row: dict, dense: float | None) -> str:
    rel = f" ({row['ppl'] / dense:.2f}x dense)" if dense else ""
    arc = (f" | ARC-e norm {row['arc_norm']:.3f} ± {row['arc_stderr']:.3f} ({row['arc_items']})"
           if "arc_norm" in row else "")
    extra = f" | sparsity {row['sparsity']:.1%} in {row['prune_seconds']:.0f} s" if "sparsity" in row else ""
    return f"{name:34} ppl {row['ppl']:9.2f}{rel}{arc}{extra}"


def cmd_oneshot(args: argparse.Namespace) -> None:
    from hwnas.prune import RECORD, PruneConfig, prune, write_pruned
    from hwnas.supernet import open_supernet

    sn = open_supernet(args.model, data_dir=args.data)
    ppl, arc = _evaluator(sn.base.tokenizer, args.arc_limit, args.data)
    full = sn.full_subnet()
    dense = _score(sn.model, ppl, arc)
    print(_line("dense", dense, None), flush=True)
    rows = [("dense", "-", "-", dense)]
    for method in args.methods.split(","):
        for structure, level in _levels(args.levels):
            model = sn.materialize(full)
            cfg = PruneConfig(method=method, sparsity=level, structure=structure, samples=args.samples,
                              seq_len=args.seq_len)
            rec = prune(model, sn.base.tokenizer, cfg, data_dir=args.data)
            row = {**_score(model, ppl, arc), "sparsity": rec["achieved"]["overall"], "prune_seconds": rec["seconds"]}
            label = f"{method} {structure if structure != 'unstructured' else f'{level:.0%}'}"
            print(_line(label, row, dense["ppl"]), flush=True)
            rows.append((label, method, structure, row))
            if args.out:
                folder = Path(args.out) / label.replace(" ", "-").replace(":", "of").replace("%", "")
                if not (folder / RECORD).is_file():
                    write_pruned(sn, full, model, sn.base.tokenizer, rec, folder)
            del model
    _table(rows, dense["ppl"])


def cmd_score(args: argparse.Namespace) -> None:
    from hwnas.model import load_model

    rows = []
    for spec in args.models:
        m = load_model(spec)
        ppl, arc = _evaluator(m.tokenizer, args.arc_limit, args.data)
        row = _score(m.model, ppl, arc)
        rec = Path(spec) / "hwnas_sparsity.json"
        if rec.is_file():
            pruned = json.loads(rec.read_text())
            row["sparsity"], row["prune_seconds"] = pruned["achieved"]["overall"], pruned["seconds"]
        print(_line(spec, row, args.dense_ppl), flush=True)
        rows.append((spec, "-", "-", row))
    _table(rows, args.dense_ppl)


def cmd_runtime(args: argparse.Namespace) -> None:
    import statistics

    from hwnas.baselines import artifact_perplexity, heldout_windows
    from hwnas.bench import interleaved
    from hwnas.export import FORMATS, export, measure_artifact
    from hwnas.fingerprint import cpu_model
    from hwnas.supernet import open_supernet

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = [("dense fp32", args.model, "deepsparse", {"sparsity": 0.0}),
            ("magnitude 50%", args.model, "deepsparse", {"sparsity": 0.5}),
            *[(lab, path, "deepsparse", {}) for lab, path in (x.split("=", 1) for x in args.sparse)],
            ("dense onnx-int8", args.model, "onnx-int8", {}), ("dense openvino-int8", args.model, "openvino-int8", {})]
    windows = None
    points = []
    for label, model, fmt, options in plan:
        folder = out / label.replace(" ", "-").replace("%", "").replace("+", "plus")
        sn = open_supernet(model, channel_order="none" if Path(model).is_dir() else "contrib", data_dir=args.data)
        windows = windows or heldout_windows(sn.base.tokenizer, 2, 256, args.data)
        if not (folder / "manifest.json").is_file():
            print(f"exporting {label} ({fmt})", flush=True)
            export(sn, sn.full_subnet(), fmt, folder, data_dir=args.data, options=dict(options), measure=False)
        m = json.loads((folder / "manifest.json").read_text())
        ppl = artifact_perplexity(folder, windows)
        sparsity = (m.get("options") or {}).get("achieved_sparsity", {}).get("overall")
        points.append({"label": label, "format": fmt, "folder": folder, "ppl": ppl, "sparsity": sparsity,
                       "size_mb": m["size_mb"], "prefill": [], "decode": [], "load": []})
        print(f"  {label}: ppl {ppl:.2f} through its runtime", flush=True)
        del sn
    if args.export_only:
        return

    def measure(i: int, rnd: int) -> None:
        p = points[i]
        ms = measure_artifact(p["folder"], FORMATS[p["format"]], prefill=128, decode=32, threads=1)
        p["prefill"].append(ms["prefill_ms"])
        p["decode"].append(ms["decode_ms_per_token"])
        p["load"].append(ms["load"])
        print(f"  round {rnd + 1}: {p['label']:28} prefill {ms['prefill_ms']:8.1f} ms  decode "
              f"{ms['decode_ms_per_token']:7.2f} ms/token (load {ms['load']:.2f})", flush=True)

    interleaved(range(len(points)), args.rounds, measure, seed=0)
    ref = points[0]
    print(f"\n{cpu_model()}, 1 thread, {args.rounds} interleaved rounds; ratios per round vs dense fp32 in DeepSparse")
    print("| model | runtime | sparsity | ppl (runtime, 2x256) | prefill ms | decode ms/token | decode speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for p in points:
        r = [a / b for a, b in zip(ref["decode"], p["decode"])]
        sp = "-" if p["sparsity"] is None else f"{p['sparsity']:.0%}"
        print(f"| {p['label']} | {p['format']} | {sp} | {p['ppl']:.2f} | {statistics.median(p['prefill']):.1f} | "
              f"{statistics.median(p['decode']):.2f} ({min(p['decode']):.2f}-{max(p['decode']):.2f}) | "
              f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}) |")
    print(f"max load during measurements: {max(max(p['load']) for p in points):.2f}")


def _table(rows: list, dense: float | None) -> None:
    print("\n| model | ppl (8x1024) | vs dense | ARC-Easy acc_norm |")
    print("|---|---:|---:|---:|")
    for label, _m, _s, row in rows:
        arc = f"{row['arc_norm']:.3f} ± {row['arc_stderr']:.3f}" if "arc_norm" in row else "-"
        rel = f"{row['ppl'] / dense:.2f}x" if dense else "-"
        print(f"| {label} | {row['ppl']:.2f} | {rel} | {arc} |")


def main() -> None:
    quiet_libraries()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arc-limit", type=int, default=None, help="score ARC-Easy on N items (0: all 2,376)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("oneshot")
    o.add_argument("--model", default="smollm2-135m")
    o.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    o.add_argument("--levels", default="0.3,0.5,0.7,2:4")
    o.add_argument("--samples", type=int, default=64)
    o.add_argument("--seq-len", type=int, default=512)
    o.add_argument("--out", default=None, help="keep the pruned folders here")
    s = sub.add_parser("score")
    s.add_argument("models", nargs="+")
    s.add_argument("--dense-ppl", type=float, default=None)
    r = sub.add_parser("runtime")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--sparse", action="append", default=[], help="LABEL=MODEL_DIR, a pruned (recovered) folder")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--export-only", action="store_true", help="export and score, measure later (an idle machine)")
    r.add_argument("--out", required=True, help="artifact folder (resumed: exported artifacts are reused)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"oneshot": cmd_oneshot, "score": cmd_score, "runtime": cmd_runtime}[args.cmd](args)


if __name__ == "__main__":
    main()

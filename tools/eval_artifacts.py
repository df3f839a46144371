"""Accuracy of what ships: exported artifacts scored through their own runtimes beside torch.

For each artifact folder (or every point of an `hwnas baselines` folder, and anything given after
it), `hwnas eval --model ARTIFACT`'s scoring (`hwnas.evaluate.artifact.ArtifactModel`) and the
torch sub-network it came from (the torch simulation of its per-block weight formats where the
manifest records them, else fp32) on the same prepared tasks; prints each task's metric with its
stderr for both, the share of items where both pick the same answer, and the cost: seconds through
the runtime / seconds in torch.

    python tools/eval_artifacts.py ART [ART ...] [--tasks arc_easy] [--limit 500] [--threads 1]
    python tools/eval_artifacts.py --baselines DIR/baselines [ART ...] --tasks arc_easy --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cell(result, name: str) -> str:
    """A task's score as the table prints it: acc_norm (else acc) ± stderr, or the perplexity."""
    if result is None:
        return "-"
    x = result.tasks[name]
    if x.ppl is not None and x.acc is None:
        return f"ppl {x.ppl:.2f}"
    v, se = (x.acc_norm, x.stderr_norm) if x.acc_norm is not None else (x.acc, x.stderr)
    return f"{v:.4f} ± {se:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument("--baselines", default=None, help="an `hwnas baselines` folder: score all its points")
    ap.add_argument("--tasks", default="arc_easy")
    ap.add_argument("--limit", type=int, default=None, help="items per task (seeded sample); default all")
    ap.add_argument("--ppl-windows", type=int, default=2)
    ap.add_argument("--ppl-window", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="skip the torch reference (runtime scores only)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    from hwnas.compression import schemes_of, simulate
    from hwnas.evaluate import Evaluator
    from hwnas.evaluate.artifact import ArtifactModel
    from hwnas.export import FORMATS, read_manifest
    from hwnas.fingerprint import cpu_model
    from hwnas.subnet import Subnet
    from hwnas.supernet import open_supernet

    torch.set_num_threads(args.threads)
    folders = [Path(a) for a in args.artifacts]
    if args.baselines:
        res = json.loads((Path(args.baselines) / "baselines.json").read_text())
        folders = [Path(p["folder"]) for p in res["points"] if p.get("kind") not in ("compare", "twin")] + folders
    sn = open_supernet("smollm2-135m")
    ev = Evaluator(sn.base.tokenizer, args.tasks, limit=args.limit, seed=0, ppl_windows=args.ppl_windows,
                   ppl_window=args.ppl_window)
    print(f"# {cpu_model()}, {args.threads} thread(s); tasks {args.tasks}, limit {args.limit or 'all'}")
    print("| artifact | format | task | runtime | torch | same answer | s runtime | s torch | cost ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for folder in folders:
        m = read_manifest(folder)
        t = time.perf_counter()
        art = ArtifactModel(folder, threads=args.threads)
        got = ev.evaluate(art)
        s_rt = time.perf_counter() - t
        ref, s_torch = None, None
        if not args.no_torch:
            subnet = Subnet.from_dict(m["subnet"])
            model = sn.materialize(subnet, share_weights=True)
            comp = subnet.compression
            spec = FORMATS[m["format"]]
            if m.get("compression"):
                from hwnas.compression import Compression

                comp = Compression.parse(m["compression"], subnet.depth)
            if comp is not None and not comp.plain:
                model = simulate(model, comp, schemes_of(spec.backend))
            t = time.perf_counter()
            ref = ev.evaluate(model)
            s_torch = time.perf_counter() - t
        agree = ref.agreement(got) if ref is not None else {}
        for name in got.tasks:
            ratio = f"{s_rt / s_torch:.2f}" if s_torch else "-"
            print(f"| {folder.name} | {m['format']} | {name} | {_cell(got, name)} | {_cell(ref, name)} | "
                  f"{agree.get(name, float('nan')):.1%} | {s_rt:.0f} | {s_torch or 0:.0f} | {ratio} |", flush=True)
            rows.append({"artifact": str(folder), "format": m["format"], "task": name,
                         "runtime": got.tasks[name].to_dict(), "torch": ref.tasks[name].to_dict() if ref else None,
                         "same_answer": agree.get(name), "seconds_runtime": s_rt, "seconds_torch": s_torch,
                         "runtime_calls": art.steps})
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

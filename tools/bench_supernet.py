"""Super-network quality on SmolLM2-135M (issue: importance ordering, InstaTune, accuracy predictor).

    python tools/bench_supernet.py table [--finetuned DIR] [--limit 200]
        WikiText-2 perplexity and ARC-Easy / WinoGrande / PIQA accuracy of the same sub-networks,
        naive slicing vs importance-ordered vs importance-ordered + InstaTune (if --finetuned).
    python tools/bench_supernet.py predictor [--model M] [--n-test 50] [--train 50,150]
        Kendall tau / MAPE of the accuracy predictor (CV-chosen among Ridge, RBF-SVR, LightGBM) on
        held-out random sub-networks, trained on 50 and 150 evaluated ones (perplexity objective).
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.evaluate import Evaluator
from hwnas.predictors import fit_predictor, kendall_tau, mape, subnet_features
from hwnas.supernet import open_supernet

TASKS = ("wikitext2", "arc_easy", "winogrande", "piqa")


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def table_subnets(layer_scores: list[float] | None) -> dict[str, dict]:
    n = 30
    ordered_drop = sorted(range(n), key=lambda i: layer_scores[i])[:6] if layer_scores else None
    mixed_widths = [1536, 1024, 768, 1280, 1024, 512] * 5
    return {
        "all layers @1024": {"layers": list(range(n)), "mlp_widths": [1024] * n},
        "all layers @768": {"layers": list(range(n)), "mlp_widths": [768] * n},
        # naive: the first 24 layers (LLaMA-NAS / DyNAS-T); ordered: the 6 least influential dropped
        "24 layers @1536": {"layers": list(range(24))} if ordered_drop is None
        else {"layers": [i for i in range(n) if i not in ordered_drop]},
        "mixed (30 layers, avg 1024)": {"layers": list(range(n)), "mlp_widths": mixed_widths},
    }


def evaluate_all(sn, evaluator: Evaluator, label: str, rows: list) -> None:
    for name, spec in {"full model": None, **table_subnets(sn.order.layer_scores if sn.order else None)}.items():
        if name == "full model" and label.startswith("ordered (") :
            continue  # importance order does not change the full model (same function as the base)
        model = sn.model if spec is None else sn.materialize(sn.parse_subnet(spec), share_weights=True)
        t0 = time.perf_counter()
        res = evaluator.evaluate(model)
        vals = {t: res.tasks[t] for t in TASKS}
        rows.append((name, label, vals, time.perf_counter() - t0, spec))
        print(f"{name:28} {label:18} ppl {vals['wikitext2'].ppl:8.2f} | "
              + " | ".join(f"{t} {_f(vals[t].acc)}/{_f(vals[t].acc_norm)}±{_f(vals[t].stderr)}" for t in TASKS[1:])
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)


def cmd_table(args: argparse.Namespace) -> None:
    variants = [("naive", "smollm2-135m", "none"), ("ordered (contrib)", "smollm2-135m", "contrib")]
    if args.finetuned:
        variants.append(("ordered + InstaTune", args.finetuned, "contrib"))
    if args.order:  # e.g. "ordered + InstaTune,ordered (contrib),naive": most wanted rows first
        wanted = args.order.split(",")
        variants = sorted((v for v in variants if v[0] in wanted), key=lambda v: wanted.index(v[0]))
    rows: list = []
    evaluator = None
    for label, model, order in variants:
        sn = open_supernet(model, channel_order=order)
        if evaluator is None:
            evaluator = Evaluator(sn.base.tokenizer, TASKS, limit=args.limit, seed=0, ppl_windows=args.ppl_windows,
                                  ppl_window=1024)
            print(f"tasks {TASKS}: --limit {args.limit} (seed 0), WikiText-2 test {args.ppl_windows} x 1024 tokens; "
                  "accuracy shown as acc/acc_norm±stderr(acc)\n")
        evaluate_all(sn, evaluator, label, rows)
        del sn
    print("\n| sub-network | variant | WikiText-2 ppl | ARC-Easy acc_norm | WinoGrande acc | PIQA acc_norm |")
    print("|---|---|---|---|---|---|")
    for name, label, v, _, _ in rows:
        print(f"| {name} | {label} | {v['wikitext2'].ppl:.2f} | {v['arc_easy'].acc_norm:.3f} ± {v['arc_easy'].stderr_norm:.3f}"
              f" | {v['winogrande'].acc:.3f} ± {v['winogrande'].stderr:.3f} | {v['piqa'].acc_norm:.3f} ± "
              f"{v['piqa'].stderr_norm:.3f} |")


def cmd_predictor(args: argparse.Namespace) -> None:
    sn = open_supernet(args.model, channel_order="contrib")
    space = sn.default_space()
    ev = Evaluator(sn.base.tokenizer, ["wikitext2"], ppl_windows=args.ppl_windows, ppl_window=512)
    rng = random.Random(args.seed)
    train_sizes = [int(t) for t in args.train.split(",")]
    n = max(train_sizes) + args.n_test
    subnets, y, seen = [], [], set()
    t0 = time.perf_counter()
    while len(subnets) < n:
        s = sn.parse_subnet(space.sample(rng), space=space)
        if s.key() in seen:
            continue
        seen.add(s.key())
        subnets.append(s)
        y.append(ev.evaluate(sn.materialize(s, share_weights=True)).objective("wikitext2"))
        if len(subnets) % 25 == 0:
            print(f"  evaluated {len(subnets)}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)
    y = np.asarray(y)
    x = subnet_features(subnets, space)
    test = slice(0, args.n_test)
    print(f"\nperplexity of {n} random sub-networks of the default space (WikiText-2 test, {args.ppl_windows} x 512 "
          f"tokens): min {y.min():.1f}, median {np.median(y):.1f}, max {y.max():.1f}")
    print(f"held-out: the first {args.n_test}; training: the next 50 / 150\n")
    print(f"{'train n':>7} {'chosen':>9} {'Kendall tau':>11} {'MAPE':>7}   CV tau per kind")
    for k in train_sizes:
        tr = slice(args.n_test, args.n_test + k)
        p = fit_predictor(x[tr], y[tr], target="wikitext2.ppl", seed=args.seed)
        pred = p.predict_features(x[test])
        cv = ", ".join(f"{kd} {v['kendall_tau']:.3f}" for kd, v in p.cv["scores"].items())
        print(f"{k:>7} {p.kind:>9} {kendall_tau(y[test], pred):>11.3f} {mape(y[test], pred):>7.1%}   {cv}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--finetuned", default=None)
    t.add_argument("--limit", type=int, default=200)
    t.add_argument("--ppl-windows", type=int, default=8)
    t.add_argument("--order", default=None, help="comma-separated variant labels to run, in this order")
    p = sub.add_parser("predictor")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--train", default="50,150")
    p.add_argument("--ppl-windows", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    print(f"torch threads {args.threads}, affinity {sorted(os.sched_getaffinity(0))}, "
          f"load average {os.getloadavg()[0]:.2f}")
    {"table": cmd_table, "predictor": cmd_predictor}[args.cmd](args)


if __name__ == "__main__":
    main()

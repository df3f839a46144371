"""The base SmolLM2-135M on every task: acc and acc_norm with their standard errors (lm-eval's sample
std / sqrt(n)), the metric an objective uses, and WikiText-2 perplexity. Prints a markdown table.

    taskset -c 0 python tools/eval_table.py [--limit 200] [--ppl-windows 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.evaluate import TASKS, Evaluator
from hwnas.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ppl-windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    base = load_model("smollm2-135m")
    t0 = time.perf_counter()
    ev = Evaluator(base.tokenizer, args.tasks, limit=args.limit, seed=args.seed, ppl_windows=args.ppl_windows)
    t_prep = time.perf_counter() - t0
    print(f"SmolLM2-135M (Q4_1 GGUF dequantized, fp32), 0-shot, --limit {args.limit} --seed {args.seed}, "
          f"{args.threads} thread(s); prepared in {t_prep:.1f} s\n")
    print("| task | n | acc ± stderr | acc_norm ± stderr | objective metric | other | seconds |")
    print("|---|---|---|---|---|---|---|", flush=True)
    total = 0.0
    for name in ev.tasks:  # one task at a time so each row appears as soon as it is done
        tr = ev.evaluate(base.model, tasks=[name]).tasks[name]
        total += tr.seconds
        if tr.window is not None:
            print(f"| {name} | {tr.n} windows | | | ppl | ppl {tr.ppl:.2f} ({tr.tokens} tokens, window "
                  f"{tr.window}, stride {tr.stride}) | {tr.seconds:.1f} |", flush=True)
            continue
        norm = f"{tr.acc_norm:.3f} ± {tr.stderr_norm:.3f}" if tr.acc_norm is not None else "—"
        other = f"ppl {tr.ppl:.2f}" if tr.ppl is not None else ""
        print(f"| {name} | {tr.n} | {tr.acc:.3f} ± {tr.stderr:.3f} | {norm} | {tr.metric} | {other} | "
              f"{tr.seconds:.1f} |", flush=True)
    print(f"\nevaluated in {total:.1f} s (wall, shared core)")

if __name__ == "__main__":
    main()

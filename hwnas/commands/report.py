"""`hwnas report`: Pareto plots and the front table of a search run; pick one sub-network."""

from __future__ import annotations

import argparse

from . import emit_json

NAME = "report"
HELP = "write a search run's Pareto plots and front table; optionally pick a sub-network by rules"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a folder written by hwnas search")
    p.add_argument("--pick", action="append", default=[], metavar="RULE",
                   help="e.g. 'decode_ms_per_token<=0.8*base' or 'arc_easy.acc_norm>=base-0.01' (repeatable)")
    p.add_argument("--best", default=None, help="metric to optimise among picks (min by default; max:METRIC)")
    p.add_argument("--pick-out", default=None, help="write the picked sub-network JSON here")


def run(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..report import Run, pick, write_report

    files = write_report(args.run_dir)
    for f in files:
        print(f"wrote {f}")
    if args.pick:
        run_ = Run.load(args.run_dir)
        best = args.best or next(o.metric for o in run_.config.objectives if o.kind != "accuracy")
        rec = pick(run_, args.pick, best)
        if args.pick_out:
            write_json(args.pick_out, rec["subnet"])
        emit_json({"picked": rec["subnet"], "index": rec["index"], "metrics": rec["metrics"],
                   "costs": rec["costs"], "latency_predicted": rec["latency_predicted"]})
    return 0

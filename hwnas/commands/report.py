"""`hwnas report`: Pareto plots and the front table of a search run; pick one sub-network."""

from __future__ import annotations

import argparse

from . import emit_json, info, progress_printer

NAME = "report"
HELP = "write a search run's Pareto plots and front table; optionally pick a sub-network by rules"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a folder written by hwnas search")
    p.add_argument("--pick", action="append", default=[], metavar="RULE",
                   help="e.g. 'decode_ms_per_token<=0.8*base' or 'arc_easy.acc_norm>=base-0.01' (repeatable)")
    p.add_argument("--best", default=None, help="metric to optimise among picks (min by default; max:METRIC)")
    p.add_argument("--pick-out", default=None, help="write the picked sub-network JSON here")
    p.add_argument("--measure-front", action="store_true",
                   help="first measure the base and the front with `bench` on the latency model's backend "
                        "(resumable; plotted beside the predictions; pick on measured.<metric>)")
    p.add_argument("--threads", type=int, default=1, help="threads for --measure-front")


def run(args: argparse.Namespace) -> int:
    from ..fileio import write_json
    from ..report import Run, measure_front, pick, write_report

    if args.measure_front:
        n = measure_front(Run.load(args.run_dir), threads=args.threads,
                          progress=progress_printer("measuring the front"))
        info(f"measured {n} sub-networks (RUN_DIR/measured.jsonl)")
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
                   "costs": rec["costs"], "latency_predicted": rec["latency_predicted"],
                   "latency_measured": rec.get("latency_measured")})
    return 0

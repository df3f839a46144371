"""`hwnas report`: Pareto plots and the front table of a search run; pick one sub-network."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import emit_json, info, positive_int, progress_printer

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
    p.add_argument("--threads", type=positive_int, default=1, help="threads for --measure-front")
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="--measure-front: interleaved rounds of the base and the front (default 3); the report "
                        "gives each one's speed-up over the base as the median and range of per-round ratios")


def run(args: argparse.Namespace) -> int:
    from ..errors import HwnasUserError
    from ..fileio import write_json
    from ..report import MEASURE_ROUNDS, Run, measure_front, parse_rule, pick, write_report

    for rule in args.pick:  # the rules' syntax, before anything is measured or written
        parse_rule(rule)
    if args.pick_out and not args.pick:
        raise HwnasUserError("--pick-out needs at least one --pick RULE")
    if args.pick_out and Path(args.pick_out).is_dir():
        raise HwnasUserError(f"--pick-out {args.pick_out} is a folder; give a file name for the sub-network JSON")
    run_ = Run.load(args.run_dir)
    if args.measure_front:
        n = measure_front(run_, threads=args.threads, rounds=args.rounds or MEASURE_ROUNDS,
                          progress=progress_printer("measuring the front, interleaved rounds"))
        info(f"made {n} measurements (RUN_DIR/measured.jsonl)")
        run_ = Run.load(args.run_dir)
    rec = None
    if args.pick:
        best = args.best or next((o.metric for o in run_.config.objectives if o.kind != "accuracy"), None)
        if best is None:
            raise HwnasUserError("the run has no cost or latency objective to pick the best by; pass --best METRIC")
        rec = pick(run_, args.pick, best)  # before the report: a pick that fails leaves nothing written
    files = write_report(args.run_dir)
    for f in files:
        print(f"wrote {f}")
    if rec is not None:
        if args.pick_out:
            write_json(args.pick_out, rec["subnet"])
        emit_json({"picked": rec["subnet"], "index": rec["index"], "metrics": rec["metrics"],
                   "costs": rec["costs"], "latency_predicted": rec["latency_predicted"],
                   "latency_measured": rec.get("latency_measured"),
                   "measured_speedup": rec.get("measured_speedup")})
    return 0

"""`hwnas search`: run a LINAS search from a YAML run config."""

from __future__ import annotations

import argparse
import sys
import time

from . import emit_json, info

NAME = "search"
HELP = "LINAS search (accuracy x latency x size) from a run config; resumable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config YAML (see docs/formats.md)")
    p.add_argument("--run-dir", default=None, help="run folder (default: runs/<run_id or config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's evaluations")
    p.add_argument("--json", action="store_true", help="print the Pareto front as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import HwnasUserError
    from ..outdir import check_out, exclusive
    from ..search import STORE_FILE, RunConfig

    cfg = RunConfig.load(args.config)
    run_dir = Path(args.run_dir or Path("runs") / (cfg.run_id or Path(args.config).stem))
    check_out(run_dir, "search", legacy=(STORE_FILE,))
    if (run_dir / STORE_FILE).is_file() and not args.resume:
        raise HwnasUserError(f"{run_dir} already holds a run: pass --resume to continue it, or another --run-dir")
    with exclusive(run_dir, "search"):  # a folder it made is removed again if check_inputs refuses
        check_inputs(cfg, args.config)
        return _search(args, cfg, run_dir)


def check_inputs(cfg, source: str) -> None:  # a RunConfig
    """What the run config names (model, space, latency models, text tasks) exists and fits, checked
    cheaply before the run folder is made or the model is loaded."""
    from pathlib import Path

    from ..errors import HwnasUserError
    from ..evaluate.tasks import TEXT_PREFIX
    from ..latency import LatencyModel
    from ..model import config_mlp_widths, load_config
    from ..space import SearchSpace

    config = load_config(cfg.model)
    if cfg.space:
        SearchSpace.load(cfg.space, num_layers=config.num_hidden_layers,
                         intermediate_size=max(config_mlp_widths(config)))
    for folder in cfg.latency_sources().values():
        LatencyModel.load(folder)
    for task in cfg.tasks:
        if task.startswith(TEXT_PREFIX) and not Path(task[len(TEXT_PREFIX):]).expanduser().is_file():
            raise HwnasUserError(f"{source}: task {task}: text file not found")


def _search(args: argparse.Namespace, cfg, run_dir) -> int:
    from ..search import Search

    t0 = time.perf_counter()

    def progress(state: dict) -> None:
        print(f"\r  round {state['round']} | evaluations {state['evaluations']}/{state['budget']} | "
              f"hypervolume {state['hypervolume']:.4f} | {time.perf_counter() - t0:.0f} s   ",
              end="", file=sys.stderr, flush=True)

    search = Search(cfg, run_dir, progress=progress)
    info(f"run folder {run_dir}: {search.spent} evaluations already stored")
    result = search.run()
    print(file=sys.stderr)
    info(f"done: {len(result.records)} real evaluations, {len(result.front)} on the front "
         f"({time.perf_counter() - t0:.0f} s); report: hwnas report {run_dir}")
    if args.json:
        emit_json({"run_dir": str(run_dir), "front": [result.records[i] for i in result.front]})
    return 0

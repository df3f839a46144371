"""`hwnas profile`: time the operator grid of a model + space on one backend into a device profile."""

from __future__ import annotations

import argparse

from . import (
    add_dtype_argument,
    add_model_argument,
    add_space_argument,
    emit_json,
    info,
    positive_int,
    positive_ints,
)

NAME = "profile"
HELP = "profile operators (attention, MLP per width, head) on a backend into a device profile folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_space_argument(p)
    p.add_argument("--backend", required=True, help="a backend name (see `hwnas backends`)")
    p.add_argument("--out", required=True, help="profile folder (resumed if it holds the same profile)")
    p.add_argument("--prefill", type=positive_ints, default=None, help="prefill token counts (default 32,128,512)")
    p.add_argument("--decode", type=positive_ints, default=None, help="decode context lengths (default 128,512,1024)")
    p.add_argument("--batch", type=positive_ints, default=None, help="batch sizes (default 1)")
    p.add_argument("--threads", type=positive_int, default=1, help="runtime threads (default 1)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="backend config field")
    p.add_argument("--in-process", action="store_true", help="measure in this process (default: workers)")
    add_dtype_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..model import load_config, resolve_dtype
    from ..outdir import check_out, exclusive
    from ..profile import HEADER_FILE, grid_for, run_profile
    from . import resolve_space
    from .bench import backend_options

    check_out(args.out, "profile", legacy=(HEADER_FILE,))
    options = backend_options(args.backend, args.option, threads=args.threads)
    config = load_config(args.model)
    space = resolve_space(args, config)
    grid = grid_for(config, space, prefill_tokens=args.prefill, decode_contexts=args.decode, batches=args.batch)
    info(f"profiling {args.model} ({space.name}) on {args.backend}: {grid.size()} grid points "
         f"in {len(grid.jobs())} graphs -> {args.out}")
    t0 = time.perf_counter()
    from rich.console import Console

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("profile", total=grid.size())

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, description=what)

        with exclusive(args.out, "profile"):
            prof = run_profile(args.model, space, args.backend, args.out, grid=grid, config=options,
                               isolate=not args.in_process, on_progress=progress, dtype=resolve_dtype(args.dtype))
    wall = time.perf_counter() - t0
    summary = {"out": args.out, "backend": args.backend, "rows": len(prof.rows), "complete": prof.header["complete"],
               "flagged_rows": prof.header.get("flagged_rows", 0), "wall_s": round(wall, 1),
               "device_slug": prof.header.get("device_slug")}
    if args.json:
        emit_json(summary)
    else:
        print(f"wrote {args.out}: {summary['rows']} rows ({summary['flagged_rows']} flagged) in {wall:.0f} s")
    return 0

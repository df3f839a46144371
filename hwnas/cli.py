"""The `hwnas` command line. Each command is a module in `hwnas.commands` with NAME, HELP,
`add_arguments(parser)` and `run(args) -> int`; heavy imports happen inside `run`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .errors import HwnasUserError

COMMANDS = (
    "hwnas.commands.space",
    "hwnas.commands.subnet",
    "hwnas.commands.demo",
    "hwnas.commands.backends",
    "hwnas.commands.profile",
    "hwnas.commands.bench",
    "hwnas.commands.finetune",
    "hwnas.commands.search",
    "hwnas.commands.report",
    "hwnas.commands.latency",
    "hwnas.commands.export",
    "hwnas.commands.verify",
    "hwnas.commands.run",
    "hwnas.commands.eval",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware NAS for LLaMA-family LLMs: profile a device, search "
        "sub-networks for it, export what you pick.",
    )
    parser.add_argument("--version", action="version", version=f"hwnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMANDS:
        mod = importlib.import_module(path)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    quiet_libraries()
    try:
        return int(args._run(args) or 0)
    except HwnasUserError as exc:
        print(f"hwnas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwnas {args.command}: interrupted", file=sys.stderr)
        return 130


def quiet_libraries() -> None:
    """transformers' per-load progress bars and warnings are noise on a command line."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())

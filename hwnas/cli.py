"""The `hwnas` command line. Each command is a module in `hwnas.commands` with NAME, HELP,
`add_arguments(parser)` and `run(args) -> int`; heavy imports happen inside `run`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .errors import HwnasUserError

COMMANDS = (
    "hwnas.commands.space",
    "hwnas.commands.subnet",
    "hwnas.commands.demo",
    "hwnas.commands.backends",
    "hwnas.commands.profile",
    "hwnas.commands.bench",
    "hwnas.commands.finetune",
    "hwnas.commands.prune",
    "hwnas.commands.recover",
    "hwnas.commands.search",
    "hwnas.commands.report",
    "hwnas.commands.latency",
    "hwnas.commands.export",
    "hwnas.commands.baselines",
    "hwnas.commands.verify",
    "hwnas.commands.run",
    "hwnas.commands.eval",
)


class HwnasArgumentParser(argparse.ArgumentParser):
    """argparse with hwnas's error style: one stderr line naming the command, exit code 2 (no usage
    block; `--help` has it). Subparsers are made of this class too (argparse uses the parent's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """A message on one line (whatever a library put into an exception's text)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = HwnasArgumentParser(
        prog="hwnas",
        description="Hardware-aware NAS for LLaMA-family LLMs: profile a device, search "
        "sub-networks for it, export what you pick.",
    )
    parser.add_argument("--version", action="version", version=f"hwnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=HwnasArgumentParser)
    for path in COMMANDS:
        mod = importlib.import_module(path)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the (sub)command's own parser, which names it and its --help
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.error("give a command: " + ", ".join(sorted(sub_names(parser))))
    quiet_libraries()
    try:
        return int(args._run(args) or 0)
    except HwnasUserError as exc:
        print(f"hwnas {args.command}: error: {one_line(exc) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hwnas {args.command}: interrupted", file=sys.stderr)
        return 130


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser the arguments chose (`hwnas latency fit` -> that subcommand's parser)."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action else None
        if chosen not in (action.choices if action else {}):
            return parser
        parser = action.choices[chosen]


def sub_names(parser: argparse.ArgumentParser) -> list[str]:
    return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]


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

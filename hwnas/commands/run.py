"""`hwnas run`: generate text with an artifact's runtime."""

from __future__ import annotations

import argparse

from . import positive_int

NAME = "run"
HELP = "generate text with an exported artifact (greedy; a first smoke test)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact folder written by hwnas export")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--threads", type=positive_int, default=1)


def run(args: argparse.Namespace) -> int:
    from ..export import generate

    print(args.prompt + generate(args.artifact, args.prompt, args.max_new_tokens, threads=args.threads))
    return 0

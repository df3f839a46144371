"""`hwnas verify`: re-check an artifact's file hashes and outputs."""

from __future__ import annotations

import argparse

from . import emit_json, positive_int

NAME = "verify"
HELP = "re-check an exported artifact: file hashes and outputs against its recorded reference"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact folder written by hwnas export")
    p.add_argument("--threads", type=positive_int, default=1)


def run(args: argparse.Namespace) -> int:
    from ..export import verify

    rep = verify(args.artifact, threads=args.threads)
    emit_json(rep)
    return 0 if rep["ok"] else 1

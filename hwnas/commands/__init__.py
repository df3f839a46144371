"""One module per CLI command; shared argument helpers live here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..model import DEFAULT_MODEL


def add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"HF folder, .gguf file, hub id, or an embedded name (default: {DEFAULT_MODEL})")


def add_space_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=None,
                   help="search-space YAML (default: the model's packaged or generic space)")


def info(msg: str) -> None:
    """Progress and diagnostics go to stderr so stdout stays machine-readable."""
    print(msg, file=sys.stderr, flush=True)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def resolve_space(args: argparse.Namespace, config=None):  # noqa: ANN001, ANN201
    """The space of --space (checked against the model's shape) or the model's default space."""
    from ..model import EMBEDDED, config_mlp_widths
    from ..space import SearchSpace

    shape = {}
    if config is not None:
        widths = config_mlp_widths(config)
        shape = {"num_layers": config.num_hidden_layers, "intermediate_size": max(widths)}
    if args.space:
        return SearchSpace.load(args.space, **shape)
    if getattr(args, "model", None) in EMBEDDED:
        return SearchSpace.packaged(args.model, **shape)
    return SearchSpace.default_for(**shape, name=f"{args.model}-default")

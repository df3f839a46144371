"""`hwnas space`: print a search space and its size."""

from __future__ import annotations

import argparse

from . import add_space_argument, emit_json, resolve_space

NAME = "space"
HELP = "print a search space (YAML) and its size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model whose shape the space applies to (default: smollm2-135m, or none "
                   "when --space declares base:)")
    add_space_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from ..model import DEFAULT_MODEL, load_config

    if args.model is None and not args.space:
        args.model = DEFAULT_MODEL
    config = load_config(args.model) if args.model else None
    space = resolve_space(args, config)
    summary = space.summary()
    if args.model:
        summary["model"] = args.model
    if args.json:
        emit_json(summary)
        return 0
    size = summary["size"]
    print(f"space {space.name}: {space.description}")
    print(f"  layers: {space.num_layers} in the base, mode {space.mode}, depths {size['allowed_depths']}")
    print(f"  MLP widths per layer: {list(space.mlp_widths)} (base {space.intermediate_size})")
    if space.compressed:
        print(f"  weight formats: {list(space.weight_formats)} per {space.compression_per} "
              f"({size['distinct_architectures']:.3g} architectures without them)")
    print(f"  size: {size['encoding_size_sci']} encodings (product of gene choices), "
          f"{size['distinct_subnets_sci']} distinct sub-networks")
    return 0

"""`hwnas prune`: one-shot SparseGPT / Wanda (llm-compressor) or magnitude pruning of a sub-network."""

from __future__ import annotations

import argparse
import json
import sys

from . import (
    add_dtype_argument,
    add_model_argument,
    add_order_argument,
    add_space_argument,
    emit_json,
    fraction,
    fractions,
    info,
    open_supernet_from_args,
    positive_int,
    resolve_space,
)

NAME = "prune"
HELP = ("one-shot pruning of a sub-network (SparseGPT or Wanda through llm-compressor, calibrated on text; "
        "magnitude as the baseline), written as a model folder")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..prune import METHODS, PROFILES, PruneConfig

    d = PruneConfig()
    add_model_argument(p)
    add_dtype_argument(p)
    p.add_argument("--subnet", default=None, help="sub-network JSON to prune (default: the whole model)")
    add_space_argument(p)
    add_order_argument(p)
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help="sparsegpt / wanda (llm-compressor, calibrated) or magnitude (the baseline)")
    p.add_argument("--sparsity", type=fraction, default=d.sparsity,
                   help="fraction of zeros in every attention and MLP linear (mean, with --profile owl)")
    p.add_argument("--structure", default=d.structure, help="unstructured (default) or N:M, e.g. 2:4")
    p.add_argument("--profile", choices=PROFILES, default=d.profile,
                   help="per-layer sparsity: uniform, or owl (outlier-weighted, the mean held at --sparsity)")
    p.add_argument("--layer-sparsity", type=fractions, default=None,
                   help="comma-separated sparsity per kept layer (overrides --sparsity/--profile)")
    p.add_argument("--calibration-data", default=d.data,
                   help="'alpaca' (the Alpaca subset in the data folder), or a .json (Alpaca format) / text file")
    p.add_argument("--samples", type=positive_int, default=d.samples, help="calibration sequences")
    p.add_argument("--seq-len", type=positive_int, default=d.seq_len, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", required=True,
                   help="output folder (new, empty, or written by hwnas prune before: then replaced)")
    p.add_argument("--json", action="store_true", help="print the sparsity record as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..outdir import check_out, replace_dir
    from ..prune import PruneConfig, prune, write_pruned

    check_out(args.out, "prune")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PruneConfig(method=args.method, sparsity=args.sparsity, structure=args.structure, profile=args.profile,
                      layer_sparsity=args.layer_sparsity, data=args.calibration_data, samples=args.samples,
                      seq_len=args.seq_len, seed=args.seed)
    sn = open_supernet_from_args(args)
    space = resolve_space(args, sn.model.config) if args.space else None
    subnet = sn.load_subnet(args.subnet, space=space) if args.subnet else sn.full_subnet()
    cfg.check(subnet.depth)  # before the model is copied
    model = sn.materialize(subnet)
    record = prune(model, sn.base.tokenizer, cfg, data_dir=args.data,
                   progress=lambda msg: info(f"  {msg}"))
    with replace_dir(args.out, "prune") as tmp:
        write_pruned(sn, subnet, model, sn.base.tokenizer, record, tmp)
    a = record["achieved"]
    if args.json:
        emit_json(record)
    else:
        print(f"wrote {args.out}: {cfg.method} {cfg.structure}, sparsity {a['overall']:.1%} "
              f"(attention {a['attention']:.1%}, MLP {a['mlp']:.1%}; layers {min(a['layers']):.0%}-"
              f"{max(a['layers']):.0%}) in {record['seconds']:.0f} s")
        print(f"  sub-network: {json.dumps(subnet.to_dict())}", file=sys.stdout)
    return 0

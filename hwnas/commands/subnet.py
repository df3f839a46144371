"""`hwnas subnet`: materialize a sub-network as a standalone HF folder."""

from __future__ import annotations

import argparse
import json
import time

from . import (
    add_dtype_argument,
    add_model_argument,
    add_order_argument,
    add_space_argument,
    emit_json,
    open_supernet_from_args,
    resolve_space,
)

NAME = "subnet"
HELP = "materialize a sub-network (--subnet JSON) as a standalone HF model folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--subnet", required=True, help='JSON file: {"layers": [...], "mlp_widths": [...]}')
    p.add_argument("--out", required=True,
                   help="output folder (new, empty, or written by hwnas subnet before: then replaced)")
    add_space_argument(p)
    add_order_argument(p)
    add_dtype_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from ..model import config_mlp_widths, load_config
    from ..modeling import parameter_count
    from ..outdir import check_out
    from ..subnet import Subnet

    check_out(args.out, "subnet")
    config = load_config(args.model)
    space = resolve_space(args, config) if args.space else None
    subnet = Subnet.load(args.subnet, num_layers=config.num_hidden_layers,
                         intermediate_size=config_mlp_widths(config), space=space)
    sn = open_supernet_from_args(args)
    base = sn.base
    t0 = time.perf_counter()
    model = sn.materialize(subnet, share_weights=True)  # only written to disk: views of the base
    t_mem = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sn.save_subnet(subnet, args.out, model=model)
    t_disk = time.perf_counter() - t0
    result = {
        "out": str(out),
        "subnet": subnet.to_dict(),
        "parameters": parameter_count(model),
        "base_parameters": base.num_parameters,
        "materialize_seconds": round(t_mem, 3),
        "save_seconds": round(t_disk, 3),
        "class": type(model).__name__,
        "channel_order": args.channel_order,
        "dtype": base.dtype,
    }
    if args.json:
        emit_json(result)
    else:
        print(f"wrote {out} ({result['class']}, {result['parameters']:,} parameters, "
              f"{result['parameters'] / result['base_parameters']:.1%} of the base) "
              f"in {t_mem:.2f} s + {t_disk:.2f} s to disk")
        print(f"  sub-network: {json.dumps(subnet.to_dict())}")
    return 0

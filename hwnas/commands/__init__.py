"""One module per CLI command; shared argument helpers live here."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..model import DEFAULT_MODEL


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give {what}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (token counts, threads, samples, steps, ...)."""
    n = _int(text, "a positive integer")
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not positive; give an integer >= 1")
    return n


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (an index, or a count where 0 means "all")."""
    n = _int(text, "an integer >= 0")
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative; give an integer >= 0")
    return n


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a positive number") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite positive number")
    return x


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a loss weight, a fraction)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a number >= 0") from None
    if not 0 <= x < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return x


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1 (a sparsity)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.5") from None
    if not 0.0 < x < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1)")
    return x


def fractions(text: str) -> list[float]:
    """argparse type: comma-separated numbers in [0, 1) (one per layer)."""
    items = [x for x in text.split(",") if x.strip()]
    out = []
    for x in items:
        try:
            v = float(x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{x!r} is not a number") from None
        if not 0.0 <= v < 1.0:
            raise argparse.ArgumentTypeError(f"{x} is not in [0, 1)")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("no values; give one per kept layer, e.g. 0.4,0.5,0.6")
    return out


def positive_ints(text: str) -> list[int]:
    """argparse type: a comma-separated list of integers >= 1, e.g. 32,128,512."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} lists no numbers; give e.g. 32,128,512")
    return [positive_int(x) for x in items]


def add_model_argument(p: argparse.ArgumentParser, artifact: bool = False) -> None:
    also = ", an exported artifact folder (scored through its runtime)" if artifact else ""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"HF folder, .gguf file, hub id{also}, or an embedded name (default: {DEFAULT_MODEL})")


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    from ..model import DTYPES

    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="what the model's weights are loaded and run in by torch (default fp32; auto: bf16 on "
                   "CPUs with AVX-512 BF16 / AMX, else fp32; bf16 halves the memory of every load)")


def add_space_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default=None,
                   help="search-space YAML (default: the model's packaged or generic space)")


def info(msg: str) -> None:
    """Progress and diagnostics go to stderr so stdout stays machine-readable."""
    print(msg, file=sys.stderr, flush=True)


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def resolve_space(args: argparse.Namespace, config=None):
    """The space of --space (checked against the model's shape) or the model's default space."""
    from ..model import config_mlp_widths
    from ..space import SearchSpace

    shape = {}
    if config is not None:
        widths = config_mlp_widths(config)
        shape = {"num_layers": config.num_hidden_layers, "intermediate_size": max(widths)}
    if args.space:
        return SearchSpace.load(args.space, **shape)
    return SearchSpace.for_model(getattr(args, "model", None) or "model", **shape)


def progress_printer(label: str):
    """A (done, total) callback that redraws one stderr line."""

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r  {label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def add_training_arguments(p: argparse.ArgumentParser, d) -> None:
    """The options every training command shares (`d`: its config's defaults, a TrainingConfig)."""
    p.add_argument("--train-data", default=d.data,
                   help="'alpaca' (the Alpaca subset in the data folder), or a .json (Alpaca format) / text file")
    p.add_argument("--steps", type=positive_int, default=d.steps)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--seq-len", type=positive_int, default=d.seq_len)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=positive_int, default=d.save_every, help="checkpoint interval (steps)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="output folder; re-running with the same options resumes")


def training_fields(args: argparse.Namespace) -> dict:
    """The shared TrainingConfig fields from parsed `add_training_arguments` options."""
    return {"steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
            "seed": args.seed, "data": args.train_data, "save_every": args.save_every}


def add_order_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel-order", default="contrib", choices=("contrib", "act", "taylor", "none"),
                   help="importance order applied before slicing MLP channels (default: contrib; "
                   "none: slice channels as stored, for comparisons)")
    p.add_argument("--data", default=None, help="data folder (default: $HWNAS_DATA or ../shared/data)")


def open_supernet_from_args(args: argparse.Namespace):  # hwnas.supernet.Supernet
    """Load --model as a super-network with --channel-order applied, reporting what it costs."""
    import time

    from ..supernet import open_supernet

    t0 = time.perf_counter()
    sn = open_supernet(args.model, channel_order=args.channel_order, data_dir=getattr(args, "data", None),
                       progress=progress_printer("scoring channel importance (first use, cached after)"),
                       dtype=getattr(args, "dtype", "fp32"))
    order = sn.order.method if sn.order is not None else "none"
    info(f"loaded {args.model} in {sn.base.load_seconds:.1f} s ({sn.base.dtype}; channel order: {order}; "
         f"{time.perf_counter() - t0:.1f} s in all)")
    return sn

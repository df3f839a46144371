"""`hwnas bench`: time one sub-network end to end (prefill, then decode with the KV cache)."""

from __future__ import annotations

import argparse

from . import add_dtype_argument, add_model_argument, emit_json, info, positive_int

NAME = "bench"
HELP = "benchmark a whole sub-network on one backend: prefill ms and decode ms per token (medians)"


def parse_options(items: list[str] | None) -> dict[str, object]:
    """KEY=VALUE backend options (numbers and true/false are converted)."""
    import yaml

    from ..errors import BackendError

    out: dict[str, object] = {}
    for item in items or []:
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise BackendError(f"backend option {item!r} must look like KEY=VALUE (e.g. device=cuda)")
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else v
        except yaml.YAMLError:
            raise BackendError(f"backend option {item!r}: cannot read the value {v!r}; give a number, "
                               "true/false or a word") from None
    return out


def backend_options(backend: str, items: list[str] | None, threads: int | None = None) -> dict[str, object]:
    """The --option KEY=VALUE of a command for `backend`, checked against the backend's config
    (unknown or mistyped keys, an unknown backend) before any work is done."""
    from hwnas.measure.backend import backend_class

    cls = backend_class(backend)
    options = parse_options(items)
    cls.CONFIG.from_dict(options)  # what the user wrote, before --threads fills in its default
    if threads is not None:
        options = {**options, "threads": threads}
        cls.CONFIG.from_dict(options)
    return options


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--subnet", default=None, help='sub-network JSON {"layers": [...], "mlp_widths": [...]} '
                   "(default: the full model)")
    p.add_argument("--backend", required=True, help="a backend name (see `hwnas backends`)")
    p.add_argument("--prefill", type=positive_int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--decode", type=positive_int, default=32, help="tokens decoded per repeat (default 32)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--threads", type=positive_int, default=1, help="runtime threads (default 1)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend config field, e.g. device=cuda (torch), stateful=false (openvino)")
    p.add_argument("--in-process", action="store_true", help="measure in this process (default: a worker)")
    add_dtype_argument(p)
    p.add_argument("--json", action="store_true", help="print the JSON result object")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..bench import bench_subnet
    from ..model import config_mlp_widths, load_config, resolve_dtype
    from ..subnet import Subnet

    options = backend_options(args.backend, args.option)
    config = load_config(args.model)
    subnet = None
    if args.subnet:
        from ..errors import SubnetError

        path = Path(args.subnet)
        if not path.is_file():
            raise SubnetError(f"sub-network file not found: {path}")
        subnet = Subnet.load(path, num_layers=config.num_hidden_layers,
                             intermediate_size=config_mlp_widths(config)).to_dict()
    info(f"benchmarking {'sub-network ' + args.subnet if subnet else 'the full model'} on {args.backend} "
         f"(prefill {args.prefill}, decode {args.decode}, batch {args.batch}, {args.threads} thread(s); "
         f"weights loaded in {resolve_dtype(args.dtype)})")
    res = bench_subnet(args.model, subnet, args.backend, prefill=args.prefill, decode=args.decode,
                       batch=args.batch, threads=args.threads, config=options,
                       isolate=not args.in_process, dtype=resolve_dtype(args.dtype))
    if res.flag_reason == "load":
        from hwnas.measure.backend import default_max_load

        from ..bench import refuse_loaded

        refuse_loaded("this benchmark", res.load, parse_options(args.option).get("max_load", default_max_load()))
    if res.flagged:
        info(f"warning: noisy measurement (CV prefill {res.cv_prefill:.3f}, decode {res.cv_decode:.3f}, "
             f"other-process load {res.load:.2f} cores)")
    if args.json:
        print(json.dumps(res.summary()))
    else:
        print(f"{res.backend}: prefill {res.prefill_ms:.2f} ms ({res.prefill_tokens} tokens), decode "
              f"{res.decode_ms_per_token:.2f} ms/token, peak {res.peak_mem_mb:.0f} MB, {res.repeats} repeats, "
              f"CV {res.cv_prefill:.3f}/{res.cv_decode:.3f} on {res.device}")
        if res.probe:
            print(f"speed probe just before: {res.probe['bandwidth_gbs']} GB/s, {res.probe['peak_gflops']} GFLOP/s")
    return 0


__all__ = ["emit_json"]

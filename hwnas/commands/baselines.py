"""`hwnas baselines`: what a user gets without searching, measured side by side on one runtime."""

from __future__ import annotations

import argparse

from . import (
    add_dtype_argument,
    add_model_argument,
    add_order_argument,
    emit_json,
    info,
    non_negative_int,
    open_supernet_from_args,
    positive_int,
    positive_ints,
)

NAME = "baselines"
HELP = ("export, score and measure the baselines (base in every format, uniform MLP width, layer dropping) "
        "on one runtime, interleaved, optionally beside searched artifacts")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    add_dtype_argument(p)
    p.add_argument("--backend", required=True, help="the runtime to deploy on: onnxruntime or openvino")
    p.add_argument("--out", required=True, help="baselines folder (new, empty, or an hwnas baselines folder: resumed)")
    p.add_argument("--formats", default=None,
                   help="comma-separated export formats (default: every installed format of the backend)")
    p.add_argument("--widths", type=positive_ints, default=[1280, 1024, 768],
                   help="uniform MLP widths, comma-separated (default 1280,1024,768)")
    p.add_argument("--drop", type=positive_ints, default=[2, 4, 6],
                   help="numbers of least influential layers to drop, comma-separated (default 2,4,6)")
    p.add_argument("--no-widths", action="store_true", help="no uniform-width baselines")
    p.add_argument("--no-drop", action="store_true", help="no layer-dropping baselines")
    p.add_argument("--compare", action="append", default=[], metavar="ARTIFACT_DIR",
                   help="an exported artifact (e.g. a searched one) measured in the same rounds (repeatable)")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved measurement rounds (default 3)")
    p.add_argument("--ppl-windows", type=positive_int, default=2, help="held-out WikiText-2 windows (default 2)")
    p.add_argument("--ppl-window", type=positive_int, default=256, help="tokens per window (default 256)")
    p.add_argument("--prefill", type=positive_int, default=128)
    p.add_argument("--decode", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repeats per measurement (default: the backend's, 5)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="shuffles the measuring order per round")
    add_order_argument(p)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--json", action="store_true", help="print the result object")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..baselines import backend_formats, run_baselines, table
    from ..errors import HwnasUserError
    from ..export import read_manifest
    from ..outdir import check_out

    check_out(args.out, "baselines")
    formats = backend_formats(args.backend, [f.strip() for f in (args.formats or "").split(",") if f.strip()])
    for c in args.compare:
        if not (Path(c) / "manifest.json").is_file():
            raise HwnasUserError(f"--compare {c}: not an artifact folder (no manifest.json); give a folder "
                                 "written by `hwnas export`")
        read_manifest(c)
    sn = open_supernet_from_args(args)
    result = run_baselines(sn, args.backend, args.out, formats=formats,
                           widths=[] if args.no_widths else args.widths, drops=[] if args.no_drop else args.drop,
                           compare=args.compare, rounds=args.rounds, ppl_windows=args.ppl_windows,
                           ppl_window=args.ppl_window, prefill=args.prefill, decode=args.decode,
                           threads=args.threads, data_dir=args.data, seed=args.seed, repeats=args.repeats,
                           progress=lambda m: info(f"  {m}"))
    if args.json:
        emit_json(result)
    else:
        print(table(result), end="")
    return 0


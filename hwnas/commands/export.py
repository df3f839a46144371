"""`hwnas export`: a sub-network as a deployable, verified, measured artifact."""

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
)

NAME = "export"
# the formats are the backend plugins' (`register_formats`), listed by `hwnas backends` and by an
# unknown --format; not repeated here, where a new plugin's would be missing
HELP = "export a sub-network as a deployable artifact, verified against torch and measured"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--subnet", help="sub-network JSON file")
    g.add_argument("--run", help="a search run folder (with --pick N: the evaluation with that index)")
    p.add_argument("--pick", type=non_negative_int, default=None, help="index of the run's evaluation to export")
    p.add_argument("--format", required=True, help="artifact format, as the backend plugins register them (`hwnas backends` lists them; "
                                                "e.g. onnx, onnx-int8, openvino-int8, gguf-q8_0)")
    p.add_argument("--out", required=True,
                   help="artifact folder (new, empty, or an hwnas artifact: then replaced)")
    add_order_argument(p)
    add_dtype_argument(p)
    p.add_argument("--group-size", type=positive_int, default=64, help="openvino-int4 group size")
    p.add_argument("--sparsity", type=float, default=None,
                   help="deepsparse format: magnitude-prune to this fraction (default: keep a pruned model's "
                   "zeros, else 0.7; hwnas prune does better)")
    p.add_argument("--latency-model", default=None, help="put this latency model's prediction beside the measurement")
    p.add_argument("--no-measure", action="store_true", help="skip the prefill/decode measurement")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--json", action="store_true", help="print the manifest")


def run(args: argparse.Namespace) -> int:
    from ..errors import HwnasUserError
    from ..export import FORMATS, ExportError, export, is_unmarked_artifact
    from ..model import config_mlp_widths, load_config
    from ..outdir import check_out
    from ..subnet import Subnet

    if args.format not in FORMATS:
        raise ExportError(f"unknown format '{args.format}'; choose one of {', '.join(FORMATS)}")
    if args.pick is not None and not args.run:
        raise HwnasUserError("--pick N chooses an evaluation of a search run: give --run RUN_DIR with it")
    check_out(args.out, "export", legacy=is_unmarked_artifact)
    if args.latency_model:
        from ..latency import LatencyModel

        LatencyModel.load(args.latency_model)  # a bad folder fails now, not after the export
    cfg = load_config(args.model)
    shape = {"num_layers": cfg.num_hidden_layers, "intermediate_size": config_mlp_widths(cfg)}
    if args.subnet:
        subnet = Subnet.load(args.subnet, **shape)
    else:
        if args.pick is None:
            raise HwnasUserError("--run needs --pick N (the index of an evaluation; see hwnas report)")
        from ..report import Run

        recs = {r["index"]: r for r in Run.load(args.run).records}
        if args.pick not in recs:
            raise HwnasUserError(f"{args.run} has no evaluation with index {args.pick}")
        subnet = Subnet.parse(recs[args.pick]["subnet"], source=f"{args.run}#{args.pick}", **shape)
    sn = open_supernet_from_args(args)
    m = export(sn, subnet, args.format, args.out, data_dir=args.data, options={"group_size": args.group_size,
                                                                          **({"sparsity": args.sparsity} if args.sparsity is not None else {})},
               measure=not args.no_measure, threads=args.threads, latency_model=args.latency_model,
               progress=lambda msg: info(f"  {msg} ..."))
    if args.json:
        emit_json({k: v for k, v in m.items() if k != "verification"} | {
            "verification": {k: v for k, v in m["verification"].items() if k != "reference"}})
        return 0
    v = m["verification"]
    against = "torch" if not m.get("compression") else "its torch simulation"
    print(f"wrote {args.out} ({m['format']}, {m['size_mb']} MB): logits vs {against} max|diff| "
          f"{v['max_abs_diff']:.2e}, cosine {v['cosine']:.5f}, top-1 {v['top1_agreement']:.1%}, ppl "
          f"{v['ppl_torch']:.2f} -> {v['ppl_artifact']:.2f}")
    if v.get("vs_fp32"):
        f = v["vs_fp32"]
        print(f"  vs the fp32 sub-network: cosine {f['cosine']:.5f}, top-1 {f['top1_agreement']:.1%}, ppl "
              f"{f['ppl_torch']:.2f} -> {f['ppl_artifact']:.2f} ({f['ppl_change']:+.1%})")
    if m["measured"]:
        ms = m["measured"]
        print(f"  measured on {m['backend']}: prefill {ms['prefill_ms']} ms, decode {ms['decode_ms_per_token']} "
              f"ms/token, peak {ms['peak_mem_mb']} MB; roofline decode bound {m['roofline']['decode_bound_ms']} ms")
        if ms.get("flagged") == "load":
            info(f"  warning: other processes used {ms['load']:.2f} CPU cores while the artifact was timed: the "
                 "manifest marks these figures flagged (load); re-measure on a quiet machine before trusting them")
    return 0

"""`hwnas latency fit | predict | validate`: the LightGBM latency model of a device profile."""

from __future__ import annotations

import argparse
import time

from . import add_space_argument, emit_json, info, positive_int, progress_printer

NAME = "latency"
HELP = "fit / use / validate a LightGBM latency model on a device profile"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="latency_cmd", metavar="{fit,predict,validate}", required=True)
    f = sub.add_parser("fit", help="measure sampled sub-networks (resumable) and fit the model")
    f.add_argument("--profile", required=True, help="device profile folder (hwnas profile --out)")
    f.add_argument("--model", default=None, help="model spec (default: the profile's model)")
    add_space_argument(f)
    f.add_argument("--samples", type=positive_int, default=40, help="sub-networks measured for training")
    f.add_argument("--prefill", type=positive_int, default=128)
    f.add_argument("--decode", type=positive_int, default=32)
    f.add_argument("--batch", type=positive_int, default=1)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--rounds", type=positive_int, default=1,
                   help="measure each sample this many times, interleaved, and train on the median")
    f.add_argument("--out", required=True, help="latency model folder")
    f.add_argument("--skip-speed-check", action="store_true",
                   help="measure even if a roofline probe says this machine is not as fast as the profile's")
    pr = sub.add_parser("predict", help="predict what `hwnas bench` would measure")
    pr.add_argument("--latency-model", required=True)
    pr.add_argument("--profile", default=None, help="the device profile, if it moved since fitting")
    pr.add_argument("--subnet", required=True)
    pr.add_argument("--prefill", type=positive_int, default=128)
    pr.add_argument("--decode", type=positive_int, default=32)
    pr.add_argument("--batch", type=positive_int, default=1)
    pr.add_argument("--at-current-speed", action="store_true",
                    help="probe this machine's speed now (~1 s) and rescale the prediction to it (default: the "
                         "profile's speed, what the model is fitted at)")
    pr.add_argument("--json", action="store_true")
    v = sub.add_parser("validate", help="measure fresh sub-networks and score the model and the plain LUT sum")
    v.add_argument("--latency-model", required=True)
    v.add_argument("--profile", default=None)
    add_space_argument(v)
    v.add_argument("--n", type=positive_int, default=30)
    v.add_argument("--seed", type=int, default=1000)
    v.add_argument("--rounds", type=positive_int, default=None,
                   help="measurements per held-out sub-network, interleaved (default: as the fit); "
                        ">= 2 also prints the round-to-round repeatability")
    v.add_argument("--skip-speed-check", action="store_true",
                   help="measure even if a roofline probe says this machine is not as fast as the profile's")
    v.add_argument("--json", action="store_true")


def _space(args: argparse.Namespace, model: str):
    from ..model import load_config
    from . import resolve_space

    args.model = model
    return resolve_space(args, load_config(model))


def run(args: argparse.Namespace) -> int:
    from ..latency import SPEED_DEADBAND, LatencyModel, fit, score_lines, validate
    from ..profile import DeviceProfile

    if args.latency_cmd == "fit":
        from ..outdir import check_out, exclusive
        from ..supernet import stored_layer_scores

        check_out(args.out, "latency-model", legacy=("samples.jsonl",))
        model = args.model or DeviceProfile.load(args.profile).header["model"]
        space = _space(args, model)
        t0 = time.perf_counter()
        with exclusive(args.out, "latency fit"):
            lm = fit(args.profile, model, space, args.out, samples=args.samples, prefill=args.prefill,
                     decode=args.decode, batch=args.batch, seed=args.seed, rounds=args.rounds,
                     speed_check=not args.skip_speed_check, layer_scores=stored_layer_scores(model),
                     progress=progress_printer("measuring sub-networks"))
        modes = {t: v["mode"] for t, v in lm.header["targets"].items()}
        info(f"wrote {args.out}: {lm.header['samples']} samples, targets {modes} ({time.perf_counter() - t0:.0f} s)")
        return 0
    lm = LatencyModel.load(args.latency_model, profile=args.profile)
    if args.latency_cmd == "predict":
        from ..model import config_mlp_widths, load_config
        from ..subnet import Subnet

        cfg = load_config(lm.header["model"])
        s = Subnet.load(args.subnet, num_layers=cfg.num_hidden_layers, intermediate_size=config_mlp_widths(cfg))
        pred = lm.predict_subnets([s], prefill=args.prefill, decode=args.decode, batch=args.batch)
        if args.at_current_speed:
            from ..measure.backend import speed_probe

            pred = lm.at_speed(pred, speed_probe(int(lm.header["bench"].get("threads", 1))))
        out = {k: round(float(v[0]), 3) for k, v in pred.items()}
        if args.json:
            emit_json(out)
        else:
            print(", ".join(f"{k} {v}" for k, v in out.items()))
        return 0
    space = _space(args, lm.header["model"])
    rep = validate(lm, space, n=args.n, seed=args.seed, rounds=args.rounds,
                   speed_check=not args.skip_speed_check, progress=progress_printer("measuring held-out sub-networks"))
    if args.json:
        emit_json(rep)
        return 0
    print(f"{rep['n']} held-out sub-networks on {rep['backend']} (median of {rep['rounds']} round(s) each; "
          "a probe taken with each; normalized to the profile's speed where it is off by more than "
          f"{SPEED_DEADBAND:.0%}"
          + (f"; median probe / profile: {', '.join(f'{t} x{v}' for t, v in rep['speed_factor'].items())}"
             if rep["speed_factor"] else "") + "):")
    rows = {t: {**stats, **({"re-meas.": rep["repeatability"][t]} if rep["repeatability"] else {})}
            for t, stats in rep["per_target"].items()}  # re-meas.: round 2 predicting round 1 (the noise floor)
    if rep["repeatability"]:
        n_noise = next(iter(rep["repeatability"].values()))["n"]
        print(f"re-meas. = {n_noise} of them measured again in a fresh worker, scored as a prediction of the "
              "first: the noise floor. A model row near it is limited by the machine, not the model.")
    print("\n".join(score_lines(rows)))
    return 0

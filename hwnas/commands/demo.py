"""`hwnas demo`: the whole pipeline end to end on the embedded default model, offline, at a small
budget: profile this machine on ONNX Runtime (reduced grid, every weight format the runtime runs),
fit the latency model, run a short joint LINAS search (architecture x per-block weight formats;
WikiText-2 perplexity of the simulated numerics x predicted decode latency), pick a sub-network,
export exactly what was searched, verify, measure, and compare it in one interleaved run with the
baselines a user gets without searching (the base in each format, layer dropping, uniform width).
Every stage writes into --out and is reused when the demo is run again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import add_dtype_argument, add_model_argument, info, positive_int, progress_printer

NAME = "demo"
SHORTLIST = 4  # candidates measured before the pick (the latency model ranks; measurements decide)
PICK_ROUNDS = 3  # interleaved measurement rounds of the shortlist
HELP = "run the end-to-end pipeline on the embedded default model (offline; every stage is reused on re-runs)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--out", default="hwnas-demo", help="folder for everything the demo writes")
    p.add_argument("--data", default=None, help="data folder (default: $HWNAS_DATA or ../shared/data)")
    p.add_argument("--channel-order", default="contrib", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="onnxruntime", help="backend to profile and fit on")
    p.add_argument("--latency-samples", type=positive_int, default=8, help="sub-networks measured to fit the latency model")
    p.add_argument("--evaluations", type=positive_int, default=40, help="real evaluations in the search")
    p.add_argument("--formats", default="searched",
                   help="artifact formats to export: 'searched' (the backend's format carrying the searched "
                        "per-block weight formats) and/or format names (which export the chosen architecture)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline comparison (the last stage)")
    p.add_argument("--threads", type=positive_int, default=1)
    add_dtype_argument(p)


def _stage(n: int, total: int, what: str) -> float:
    info(f"[{n}/{total}] {what}")
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    from ..export import FORMATS, ExportError
    from ..outdir import claim_dir, exclusive

    t_start = time.perf_counter()
    unknown = [f for f in args.formats.split(",") if f not in FORMATS and f != "searched"]
    if unknown:
        raise ExportError(f"unknown format '{unknown[0]}' in --formats; choose from {', '.join(FORMATS)}")
    out = claim_dir(args.out, "demo", legacy=("chosen_subnet.json", "profile", "latency", "run"))
    with exclusive(out, "demo"):
        return _demo(args, out, t_start)


def _demo(args: argparse.Namespace, out: Path, t_start: float) -> int:
    import dataclasses

    from ..bench import bench_subnet
    from ..compression import schemes_of
    from ..errors import HwnasUserError
    from ..evaluate import Evaluator
    from ..export import FORMATS, export, searched_format
    from ..fileio import write_text
    from ..latency import LatencyModel, fit
    from ..profile import OperatorGrid, grid_for, run_profile
    from ..report import Run, shortlist, write_report
    from ..search import LinasConfig, Objective, RunConfig, Search
    from ..supernet import open_supernet

    total = 8
    timings: dict[str, float] = {}

    t = _stage(1, total, f"loading {args.model} with its channel-importance order")
    sn = open_supernet(args.model, channel_order=args.channel_order, data_dir=args.data,
                       progress=progress_printer("scoring channel importance (first run only)"), dtype=args.dtype)
    formats = ("fp32", *sorted(schemes_of(args.backend)))
    space = dataclasses.replace(sn.default_space(), weight_formats=formats, compression_per="block")
    space.save(out / "space.yaml")
    size = space.summary()["size"]
    info(f"      {sn.num_layers} layers, {sn.base.num_parameters:,} parameters; space {space.name} x weight formats "
         f"{list(formats)} per block: {size['distinct_subnets_sci']} sub-networks "
         f"({float(size['distinct_architectures']):.3g} architectures)")
    timings["load"] = time.perf_counter() - t

    t = _stage(2, total, f"profiling this machine on {args.backend} (reduced grid)")
    grid = grid_for(sn.model.config, space, prefill_tokens=[32, 128], decode_contexts=[128, 256])
    assert isinstance(grid, OperatorGrid)
    prof_dir = out / "profile"
    run_profile(args.model, space, args.backend, prof_dir, grid=grid, config={"threads": args.threads},
                dtype=sn.base.dtype, on_progress=lambda d, n, what: info(f"      {d}/{n} rows ({what})"))
    timings["profile"] = time.perf_counter() - t

    t = _stage(3, total, f"fitting the latency model ({args.latency_samples} measured sub-networks)")
    lm_dir = out / "latency"
    if (lm_dir / "latency_model.yaml").is_file():
        lm = LatencyModel.load(lm_dir)
    else:
        # the profile was taken by this run a moment ago: no speed probe (a demo should not stop
        # because a browser was busy); `hwnas latency fit` on its own does check
        lm = fit(prof_dir, args.model, space, lm_dir, samples=args.latency_samples, speed_check=False,
                 layer_scores=sn.order.layer_scores if sn.order else None,
                 progress=progress_printer("measuring sub-networks"))
    timings["latency"] = time.perf_counter() - t

    t = _stage(4, total, f"joint LINAS search ({args.evaluations} real evaluations: WikiText-2 ppl x decode ms)")
    initial = max(6, args.evaluations // 2)
    per_round = max(2, (args.evaluations - initial) // 2)
    cfg = RunConfig(model=args.model, channel_order=args.channel_order,
                    objectives=[Objective("wikitext2.ppl"), Objective("decode_ms_per_token")],
                    tasks=["wikitext2"], ppl_windows=2, ppl_window=512, latency_model=str(lm_dir),
                    space=str(out / "space.yaml"), backend=args.backend,
                    linas=LinasConfig(initial=initial, rounds=2, per_round=per_round, inner_evaluations=5000,
                                      population=50), data=args.data, run_id="demo", dtype=sn.base.dtype)
    evaluator = Evaluator(sn.base.tokenizer, cfg.tasks, seed=0, data_dir=args.data, ppl_windows=2, ppl_window=512)
    search = Search(cfg, out / "run", supernet=sn, evaluator=evaluator,
                    progress=lambda s: info(f"      round {s['round']}: {s['evaluations']}/{s['budget']} evaluations, "
                                            f"hypervolume {s['hypervolume']:.3f}"))
    search.run()
    timings["search"] = time.perf_counter() - t

    t = _stage(5, total, f"picking: the {SHORTLIST} fastest (predicted decode) at <= 1.1x the base's perplexity, "
                         f"measured in {PICK_ROUNDS} interleaved rounds")
    run_ = Run.load(out / "run")
    rules = ["wikitext2.ppl<=1.1*base"]
    try:
        short = shortlist(run_, rules, "decode_ms_per_token", SHORTLIST)
    except HwnasUserError:
        rules = ["wikitext2.ppl<=1.5*base"]
        short = shortlist(run_, rules, "decode_ms_per_token", SHORTLIST)
        info("      nothing met the first rule; relaxed to perplexity <= 1.5x base")
    rec, benched = _pick_measured(run_, short, sn, args)
    chosen = sn.parse_subnet(rec["subnet"])
    write_text(out / "chosen_subnet.json", json.dumps(chosen.to_dict()) + "\n")
    report_files = write_report(out / "run")
    timings["pick+report"] = time.perf_counter() - t

    t = _stage(6, total, "measuring base (fp32) and chosen (as searched) and their accuracy")
    from ..compression import simulate

    acc_eval = Evaluator(sn.base.tokenizer, ["wikitext2", "arc_easy"], limit=100, seed=0, data_dir=args.data,
                         ppl_windows=4, ppl_window=1024)
    rows = {}
    for name, s in (("base", sn.full_subnet()), ("chosen", chosen)):
        acc = acc_eval.evaluate(sn.model if name == "base" else
                                simulate(sn.materialize(s, share_weights=True), s.compression, search.schemes))
        b = benched.get(s.key()) or _fit_sample(lm_dir, s.to_dict(), args.threads) or bench_subnet(
            args.model, s.to_dict(), args.backend, threads=args.threads, dtype=sn.base.dtype)
        pred = {k: float(v[0]) for k, v in lm.predict_subnets([s]).items()}
        rows[name] = {"ppl": acc.tasks["wikitext2"].ppl, "arc_easy": acc.tasks["arc_easy"].acc_norm,
                      "prefill_ms": b.prefill_ms, "decode_ms": b.decode_ms_per_token, "peak_mb": b.peak_mem_mb,
                      "pred_prefill_ms": pred["prefill_ms"], "pred_decode_ms": pred["decode_ms_per_token"],
                      "params": search.costs.of_subnet(s)["params"],
                      "format": f"{args.backend} {s.compression.summary() if s.compression else 'fp32'}"}
    timings["measure"] = time.perf_counter() - t

    t = _stage(7, total, f"exporting the chosen sub-network: {args.formats}")
    searched_fmt = searched_format(args.backend) or next(  # a backend without weight formats: its fp32 one
        f.name for f in FORMATS.values() if f.backend == args.backend and f.precision == "fp32")
    artifacts = {}
    for fmt in args.formats.split(","):
        subnet = chosen if fmt == "searched" else chosen.architecture
        fmt = searched_fmt if fmt == "searched" else fmt
        artifacts[fmt] = out / "artifacts" / fmt
        # the latency model predicts the formats of the backend it was fitted on whose numerics it knows
        # (fp32, or weight formats the artifact declares); not, e.g., an NNCF-compressed IR
        predicted = FORMATS[fmt].backend == args.backend and (FORMATS[fmt].precision == "fp32"
                                                               or FORMATS[fmt].weights is not None)
        m = export(sn, subnet, fmt, artifacts[fmt], data_dir=args.data, threads=args.threads,
                   latency_model=str(lm_dir) if predicted else None,
                   progress=lambda msg: info(f"      {msg} ..."))
        v, ms = m["verification"], m["measured"]
        rows[f"chosen {fmt}"] = {"ppl": None, "arc_easy": None, "prefill_ms": ms["prefill_ms"],
                                 "decode_ms": ms["decode_ms_per_token"], "peak_mb": ms["peak_mem_mb"],
                                 "size_mb": m["size_mb"], "format": fmt, "top1": v["top1_agreement"],
                                 "ppl_change": v["ppl_change"], "bound": m["roofline"]["decode_fraction_of_bound"],
                                 "against": "torch" if not m.get("compression") else "torch simulation"}
    timings["export"] = time.perf_counter() - t

    result = None
    if not args.no_baselines:
        from ..baselines import backend_formats, run_baselines, verdicts

        t = _stage(8, total, f"baselines on {args.backend}, interleaved with the chosen artifact (3 rounds)")
        result = run_baselines(sn, args.backend, out / "baselines", formats=backend_formats(args.backend),
                               widths=[space.mlp_widths[len(space.mlp_widths) // 2]],
                               drops=[max(1, round(2 * (sn.num_layers - min(space.allowed_depths)) / 3))], compare=[p for f, p in artifacts.items()
                                                                   if FORMATS[f].backend == args.backend],
                               rounds=3, threads=args.threads, data_dir=args.data, reference_base_only=True,
                               progress=lambda msg: info(f"      {msg}"))
        timings["baselines"] = time.perf_counter() - t

    print(f"\nhwnas demo: {args.model} on this machine ({args.backend}, {args.threads} thread(s))\n")
    print(f"{'':22} {'WikiText-2 ppl':>14} {'ARC-e acc_n':>11} {'prefill ms':>10} {'decode ms/tok':>13} "
          f"{'peak MB':>8} {'params M':>8}   predicted prefill / decode")
    for name in ("base", "chosen"):
        r = rows[name]
        print(f"{name + ' (' + r['format'] + ')':22} {r['ppl']:>14.2f} {r['arc_easy']:>11.3f} {r['prefill_ms']:>10.1f} "
              f"{r['decode_ms']:>13.2f} {r['peak_mb']:>8.0f} {r['params'] / 1e6:>8.1f}   "
              f"{r['pred_prefill_ms']:.1f} / {r['pred_decode_ms']:.2f}")
    for name, r in rows.items():
        if name.startswith("chosen "):
            print(f"{name:22} {'':>14} {'':>11} {r['prefill_ms']:>10.1f} {r['decode_ms']:>13.2f} {r['peak_mb']:>8.0f} "
                  f"{'':>8}   top-1 vs {r['against']} {r['top1']:.1%}, ppl {r['ppl_change']:+.1%}, {r['size_mb']} MB, "
                  f"{r['bound']:.0%} of the decode roofline bound")
    base_dec = rows["base"]["decode_ms"]
    best = min((r for n, r in rows.items() if n.startswith("chosen ")), key=lambda r: r["decode_ms"])
    print(f"\nchosen sub-network ({rules}): {chosen.depth} layers; best artifact {best['format']} decodes "
          f"{base_dec / best['decode_ms']:.2f}x faster than the {args.backend} fp32 base")
    if result is not None:
        print("\nagainst the baselines (perplexity through each artifact's runtime, 2x256 held-out tokens; "
              "decode interleaved in 3 rounds):")
        for line in verdicts(result):
            print(line)
    print("\nwhere everything is:")
    for what, path in (("device profile", prof_dir), ("latency model", lm_dir), ("search run", out / "run"),
                       ("report", report_files[-1].parent), ("chosen sub-network", out / "chosen_subnet.json"),
                       ("artifacts", out / "artifacts"), ("baselines", out / "baselines")):
        print(f"  {what:20} {path}")
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; total {time.perf_counter() - t_start:.0f} s")
    return 0


def _pick_measured(run_, short: list[dict], sn, args: argparse.Namespace) -> tuple[dict, dict]:
    """The latency model ranks; the machine decides. The shortlist is measured in interleaved
    rounds (shuffled order, a clean worker each: one measurement per candidate cannot see a few per
    cent). Going from the most accurate to the least, a candidate replaces the current pick only
    if it is faster than it in every round. Returns the record and each candidate's median
    measurement."""
    import statistics

    from ..bench import bench_subnet, interleaved

    subs = {s.key(): (r, s) for r, s in ((r, sn.parse_subnet(r["subnet"])) for r in short)}
    runs: dict[str, list] = {k: [] for k in subs}
    interleaved(list(subs), PICK_ROUNDS, lambda k, _: runs[k].append(
        bench_subnet(args.model, subs[k][1].to_dict(), args.backend, threads=args.threads, dtype=sn.base.dtype)))
    median = {k: sorted(v, key=lambda b: b.decode_ms_per_token)[len(v) // 2] for k, v in runs.items()}
    pick = None
    for k in sorted(subs, key=lambda k: run_.value(subs[k][0], "wikitext2.ppl")):  # most accurate first
        if pick is None or all(a.decode_ms_per_token < b.decode_ms_per_token for a, b in zip(runs[k], runs[pick])):
            pick = k  # less accurate, but faster than the current pick in every round
    for k, (r, s) in subs.items():
        info(f"      {s.depth} layers, {s.compression.summary() if s.compression else 'fp32'}: ppl "
             f"{run_.value(r, 'wikitext2.ppl'):.2f}, decode predicted {run_.value(r, 'decode_ms_per_token'):.2f} / "
             f"measured {statistics.median(b.decode_ms_per_token for b in runs[k]):.2f} ms/token "
             f"(rounds {', '.join(f'{b.decode_ms_per_token:.2f}' for b in runs[k])}){'  <- shipped' if k == pick else ''}")
    return subs[pick][0], median


def _fit_sample(lm_dir: Path, subnet: dict, threads: int):
    """The latency fit's own measurement of `subnet` (it always measures the full model), if any:
    same bench path and settings, so the demo does not measure it twice."""
    from ..bench import BenchResult
    from ..latency import measured_sample
    from ..subnet import Subnet

    rec = measured_sample(lm_dir / "samples.jsonl", Subnet.from_dict(subnet), threads=threads)
    return None if rec is None else BenchResult.from_dict(rec)

"""`hwnas eval`: lm-eval-style accuracy and perplexity of a model or a sub-network, offline."""

from __future__ import annotations

import argparse
import time

from . import (
    add_dtype_argument,
    add_model_argument,
    add_order_argument,
    emit_json,
    info,
    non_negative_int,
    positive_int,
)

NAME = "eval"
HELP = ("score a model, a sub-network or an exported artifact (through its own runtime) on lm-eval-style tasks "
        "(0-shot multiple choice) and perplexity")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate.tasks import DEFAULT_TASKS, TASKS

    add_model_argument(p, artifact=True)
    p.add_argument("--subnet", default=None, help='JSON file: {"layers": [...], "mlp_widths": [...]}')
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma-separated; known: {', '.join(TASKS)}; text:PATH = perplexity on a text file")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="items per task: a seeded sample (stratified by subject for MMLU); default all")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    p.add_argument("--ppl-windows", type=non_negative_int, default=8,
                   help="perplexity windows per text (0 = the whole text)")
    p.add_argument("--ppl-window", type=positive_int, default=None, help="perplexity window in tokens (default 1024)")
    p.add_argument("--ppl-stride", type=positive_int, default=None,
                   help="tokens between window starts (default: the window, i.e. no overlap)")
    add_order_argument(p)  # also adds --data
    add_dtype_argument(p)
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help='print {"tasks": {...}, "seconds": ...}')


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..evaluate import Evaluator
    from ..evaluate.tasks import TEXT_PREFIX, TaskError, parse_tasks
    from ..model import dtype_name, load_model

    specs = parse_tasks(args.tasks)  # an unknown name fails before the model loads
    if not specs:
        raise TaskError(f"--tasks {args.tasks!r} names no task; give e.g. --tasks wikitext2,arc_easy")
    for spec in specs:
        if spec.name.startswith(TEXT_PREFIX) and not Path(spec.file).is_file():
            raise TaskError(f"task {spec.name}: text file '{spec.file}' not found")
    artifact = _artifact_folder(args.model)
    if artifact is not None and args.subnet:
        from ..errors import HwnasUserError

        raise HwnasUserError(f"--model {args.model} is an exported artifact (one sub-network already); drop --subnet")
    if args.subnet:  # a bad sub-network file fails before the model loads, too
        from ..model import config_mlp_widths, load_config
        from ..subnet import Subnet

        cfg = load_config(args.model)
        Subnet.load(args.subnet, num_layers=cfg.num_hidden_layers, intermediate_size=config_mlp_widths(cfg))
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    source = None
    if artifact is not None:
        from ..evaluate.artifact import ArtifactModel
        from ..export import FORMATS

        model = ArtifactModel(artifact, threads=args.threads or 1)
        tokenizer = model.tokenizer()
        spec = FORMATS[model.format]
        source = {"artifact": str(artifact), "format": model.format, "runtime": spec.runner or spec.backend}
        info(f"artifact {artifact} ({model.format}): every logit from {source['runtime']}, token by token "
             f"through its KV cache")
    elif args.subnet:
        from . import open_supernet_from_args

        sn = open_supernet_from_args(args)
        tokenizer = sn.base.tokenizer
        subnet = sn.load_subnet(args.subnet)
        model = sn.materialize(subnet, share_weights=True)
        info(f"sub-network: {subnet.depth} layers, materialized in memory")
    else:
        base = load_model(args.model, dtype=args.dtype)
        tokenizer, model = base.tokenizer, base.model
        info(f"loaded {args.model} in {base.load_seconds:.1f} s")
    ev = Evaluator(tokenizer, args.tasks, limit=args.limit, seed=args.seed, data_dir=args.data,
                   ppl_windows=args.ppl_windows or None, ppl_window=args.ppl_window,
                   ppl_stride=args.ppl_stride)
    ran_in = None if artifact is not None else dtype_name(next(model.parameters()).dtype)  # torch's dtype
    info(f"prepared {len(ev.tasks)} task(s) in {time.perf_counter() - t0:.1f} s; evaluating ...")
    result = ev.evaluate(model)
    if args.json:
        out = result.to_dict()
        doc = {"tasks": out["tasks"], "seconds": out["seconds"], "limit": out["limit"], "seed": out["seed"],
               "dtype": ran_in}
        if source is not None:
            doc["artifact"] = {**source, "runtime_calls": model.steps}
        emit_json(doc)
        return 0
    print(f"{'task':16} {'metric':>8} {'acc':>7} {'acc_norm':>8} {'stderr':>7} {'n':>6} {'ppl':>9} {'s':>7}")
    for name, tr in result.tasks.items():
        def f(x: float | None, spec: str = ".4f") -> str:
            return "-" if x is None else format(x, spec)

        print(f"{name:16} {tr.metric:>8} {f(tr.acc):>7} {f(tr.acc_norm):>8} {f(tr.stderr):>7} {tr.n:>6} "
              f"{f(tr.ppl, '.2f'):>9} {tr.seconds:>7.1f}")
    print(f"evaluated in {result.seconds:.1f} s" + (f" ({ran_in})" if ran_in else ""))
    return 0


def _artifact_folder(model: str):
    """The folder, when --model names an exported hwnas artifact (a folder with its manifest)."""
    from pathlib import Path

    folder = Path(model)
    if not (folder.is_dir() and (folder / "manifest.json").is_file()):
        return None
    from ..export import read_manifest

    read_manifest(folder)  # an unreadable manifest is a one-line error here
    return folder

"""`hwnas recover`: distil one chosen sub-network (sliced and/or sparse) from the full model."""

from __future__ import annotations

import argparse
import sys

from . import (
    add_model_argument,
    add_order_argument,
    add_space_argument,
    add_training_arguments,
    info,
    non_negative_float,
    open_supernet_from_args,
    resolve_space,
    training_fields,
)

NAME = "recover"
HELP = ("recovery distillation of one sub-network from the full model (SquareHead per-block loss + logit KD; "
        "a pruned student keeps its zeros)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..model import DTYPES
    from ..recover import RecoverConfig

    d = RecoverConfig()
    add_model_argument(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--subnet", help="sub-network JSON: materialized from --model, then distilled")
    who.add_argument("--student", help="a model folder cut from --model (hwnas subnet, hwnas prune, an earlier recover)")
    add_space_argument(p)
    add_order_argument(p)
    add_training_arguments(p, d)
    p.add_argument("--hidden-weight", type=non_negative_float, default=d.hidden_weight,
                   help="weight of the SquareHead per-block loss (normalized MSE of block outputs)")
    p.add_argument("--logit-weight", type=non_negative_float, default=d.logit_weight,
                   help="weight of the KL divergence to the teacher's logits")
    p.add_argument("--label-weight", type=non_negative_float, default=d.label_weight,
                   help="weight of cross-entropy on the next token (default 0: distillation only)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="autocast compute dtype (auto: bf16 on CUDA and on CPUs with AVX-512 BF16/AMX, else fp32); "
                   "master weights stay fp32")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..errors import HwnasUserError
    from ..model import resolve_dtype
    from ..outdir import check_out, exclusive
    from ..recover import LOG, RECORD, RecoverConfig, carry_markers, recover, teacher_layers

    check_out(args.out, "recover", legacy=(RECORD, LOG, "checkpoint"))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise HwnasUserError("--device cuda asked for but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not any((args.hidden_weight, args.logit_weight, args.label_weight)):
        raise HwnasUserError("every loss weight is 0: give --hidden-weight, --logit-weight or --label-weight > 0")
    cfg = RecoverConfig(**training_fields(args), hidden_weight=args.hidden_weight, logit_weight=args.logit_weight,
                        label_weight=args.label_weight, dtype=resolve_dtype(args.dtype, args.device))
    if args.subnet:
        sn = open_supernet_from_args(args)
        space = resolve_space(args, sn.model.config) if args.space else None
        subnet = sn.load_subnet(args.subnet, space=space)
        student = sn.materialize(subnet)
        teacher, tokenizer = sn.model, sn.base.tokenizer
        layer_map = list(subnet.layers)
        source = {"teacher": {"spec": sn.base.spec, "sha256": sn.base.source_hash},
                  "student": {"subnet": subnet.to_dict()}}

        def markers(folder: Path) -> None:
            sn.write_markers(subnet, student, folder)
    else:
        from ..model import load_model

        student_dir = Path(args.student)
        if not student_dir.is_dir():
            raise HwnasUserError(f"--student {student_dir} is not a folder")
        base = load_model(args.model)
        loaded = load_model(str(student_dir))
        student, teacher, tokenizer = loaded.model, base.model, base.tokenizer
        if student.config.hidden_size != teacher.config.hidden_size:
            raise HwnasUserError(f"--student has hidden size {student.config.hidden_size}, --model "
                                 f"{teacher.config.hidden_size}: it was not cut from this model")
        layer_map = teacher_layers(student_dir, len(student.model.layers), len(teacher.model.layers),
                                   base.source_hash)
        source = {"teacher": {"spec": base.spec, "sha256": base.source_hash},
                  "student": {"folder": str(student_dir.resolve()), "sha256": loaded.source_hash}}
        markers = carry_markers(student_dir)
    if args.device != "cpu":
        teacher.to(args.device)
        student.to(args.device)

    def progress(step: int, total: int, rec: dict) -> None:
        losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in rec.items() if k.startswith("loss_"))
        print(f"\r  step {step}/{total} {losses} ({rec['seconds']:.1f} s/step)   ",
              end="\n" if step == total else "", file=sys.stderr, flush=True)

    info(f"recovering a {len(student.model.layers)}-layer student from the {len(teacher.model.layers)}-layer "
         f"teacher: {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len} tokens, autocast {cfg.dtype}")
    with exclusive(args.out, "recover"):
        out = recover(teacher, student, tokenizer, cfg, args.out, layer_map=layer_map, source=source,
                      markers=markers, data_dir=args.data, progress=progress)
    info(f"wrote the recovered model to {out} (loss log: {out}/{LOG}); use it as --model")
    return 0

"""`hwnas finetune`: InstaTune fine-tuning of the super-network."""

from __future__ import annotations

import argparse
import sys

from . import (
    add_model_argument,
    add_order_argument,
    add_space_argument,
    add_training_arguments,
    info,
    open_supernet_from_args,
    resolve_space,
    training_fields,
)

NAME = "finetune"
HELP = "InstaTune: fine-tune the super-network so its sub-networks inherit good weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..finetune import RULES, FinetuneConfig

    d = FinetuneConfig()
    add_model_argument(p)
    add_space_argument(p)
    add_order_argument(p)
    add_training_arguments(p, d)
    p.add_argument("--rule", choices=RULES, default=d.rule,
                   help="alternate: full / random sub-network on alternate steps (LLaMA-NAS); "
                   "sandwich: largest + smallest + random every step")
    p.add_argument("--no-kd", action="store_true", help="train sub-networks on labels, not distillation")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..finetune import FinetuneConfig, finetune
    from ..outdir import check_out, exclusive
    from ..space import FINETUNE_RECORD

    check_out(args.out, "finetune", legacy=(FINETUNE_RECORD, "loss_log.jsonl", "checkpoint"))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FinetuneConfig(**training_fields(args), rule=args.rule, kd=not args.no_kd)
    sn = open_supernet_from_args(args)
    space = resolve_space(args, sn.model.config)
    if args.device != "cpu":
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            from ..errors import HwnasUserError

            raise HwnasUserError("--device cuda asked for but no CUDA device is available")
        sn.model.to(args.device)

    def progress(step: int, total: int, rec: dict) -> None:
        losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in rec.items() if k.startswith("loss_"))
        print(f"\r  step {step}/{total} {losses} ({rec['seconds']:.1f} s/step)   ",
              end="\n" if step == total else "", file=sys.stderr, flush=True)

    with exclusive(args.out, "finetune"):
        out = finetune(sn, space, cfg, args.out, data_dir=args.data, progress=progress)
    info(f"wrote the fine-tuned super-network to {out} (loss log: {out}/loss_log.jsonl)")
    return 0

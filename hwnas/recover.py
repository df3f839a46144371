"""Recovery distillation of one chosen sub-network (Sparse Llama's SquareHead, Minitron's "prune, then
distil the one you ship").

The student is a real, smaller model: a sub-network materialized from the base (`--subnet`), or a
folder written by `hwnas subnet` / `hwnas prune` (`--student`), sliced and/or sparse. The teacher
is the full base model (its channel order applied, so hidden states live in the same space). Each
step, on the same batch:

- **SquareHead** (arXiv 2310.06927): for every kept layer, the normalized MSE between the student's
  block output and the teacher's output of the same base layer, ``|h_s - h_t|^2 / |h_t|^2``,
  averaged over layers;
- **logit KD**: KL(teacher || student) over the vocabulary at temperature 1;
- optionally cross-entropy on the labels.

Weights that are zero when recovery starts stay zero (the masks are enforced after every optimizer
step), so a pruned student keeps its sparsity. Compute runs under autocast in `dtype` (bf16 where the
CPU has AVX-512 BF16/AMX or on CUDA; fp32 master weights either way). Checkpoints are safetensors
and JSON (resumable with the same options, no pickle); the output folder is an HF model folder that
every command takes as `--model`, carrying the student's `hwnas_subnet.json` / `hwnas_order.json`
and `hwnas_recover.yaml` (what was done, the first and last losses, the sparsity kept)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import HwnasUserError
from .fileio import append_jsonl, truncate_jsonl, write_yaml
from .finetune import (
    TrainingConfig,
    _checkpoint,
    _kd_loss,
    batch_for_step,
    move_in_model,
    remove_checkpoints,
    resumable_checkpoint,
    training_state,
    training_tokens,
)
from .model import TORCH_DTYPES
from .prune import SPARSE_MODEL_AT, decoder_linears

RECORD = "hwnas_recover.yaml"
LOG = "loss_log.jsonl"
CARRIED = ("hwnas_subnet.json", "hwnas_order.json", "hwnas_sparsity.json")  # the student's markers, kept


@dataclass
class RecoverConfig(TrainingConfig):
    lr: float = 1e-4
    hidden_weight: float = 1.0  # SquareHead
    logit_weight: float = 1.0  # KL to the teacher's logits
    label_weight: float = 0.0  # cross-entropy on the next token
    dtype: str = "fp32"  # autocast dtype actually used (resolved from auto before training)


def teacher_layers(student_dir: Path | None, student_depth: int, teacher_depth: int,
                   teacher_hash: str | None = None) -> list[int]:
    """Which base layer each student layer was cut from (`hwnas_subnet.json`, which must name this
    teacher when `teacher_hash` is given), or the identity for a student as deep as the teacher."""
    marker = student_dir / "hwnas_subnet.json" if student_dir is not None else None
    if marker is not None and marker.is_file():
        data = json.loads(marker.read_text())
        cut_from = data.get("base", {}).get("sha256")
        if cut_from and teacher_hash and cut_from != teacher_hash:
            raise HwnasUserError(f"the student was cut from another base (sha256 {cut_from[:12]}…) than the "
                                 f"teacher ({teacher_hash[:12]}…)")
        layers = data["subnet"]["layers"]
        if len(layers) != student_depth or max(layers) >= teacher_depth:
            raise HwnasUserError(f"{marker} names {len(layers)} layers of a {teacher_depth}-layer base; the "
                                 f"student has {student_depth}: it was not cut from this --model")
        return list(layers)
    if student_depth != teacher_depth:
        raise HwnasUserError(f"the student has {student_depth} layers and no hwnas_subnet.json saying which of "
                             f"the teacher's {teacher_depth} it kept; make it with hwnas subnet or hwnas prune")
    return list(range(student_depth))


def sparsity_masks(model) -> dict[torch.nn.Linear, torch.Tensor]:
    """Boolean keep-masks of the decoder linears that are pruned (at least `SPARSE_MODEL_AT` exact
    zeros), by module."""
    masks = {}
    for _i, _kind, lin in decoder_linears(model):
        keep = lin.weight.detach() != 0
        if 1.0 - keep.float().mean().item() >= SPARSE_MODEL_AT:
            masks[lin] = keep
    return masks


def sparsity_of(masks: dict[torch.nn.Linear, torch.Tensor]) -> float | None:
    """The fraction of zeros over the masked linears (None: none are masked)."""
    if not masks:
        return None
    zeros = sum(int((lin.weight.detach() == 0).sum()) for lin in masks)
    return zeros / sum(m.numel() for m in masks.values())


class _LayerOutputs:
    """Forward hooks that keep each decoder layer's output hidden state."""

    def __init__(self, layers) -> None:
        self.out: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(_mod, _args, output):
            self.out[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def squarehead_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of |h_s - h_t|^2 / |h_t|^2 (per layer, over the batch)."""
    terms = [(s.float() - t.float()).pow(2).mean() / t.float().pow(2).mean().clamp_min(1e-12)
             for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def recover(teacher, student, tokenizer, cfg: RecoverConfig, out: str | Path, *, layer_map: list[int],
            source: dict, markers: Callable[[Path], None] | None = None, data_dir: str | Path | None = None,
            resume: bool = True, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Distil `student` from `teacher` in place and write it to `out` (an HF folder usable as --model)."""
    from .outdir import check_out, claim_dir

    out = check_out(out, "recover", legacy=(RECORD, LOG, "checkpoint"))
    ckpt = resumable_checkpoint(out)
    stream = training_tokens(tokenizer, cfg.data, data_dir)
    if stream.numel() < cfg.seq_len * 4:
        raise HwnasUserError(f"recovery data has only {stream.numel()} tokens")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    masks = sparsity_masks(student)  # before a checkpoint is loaded: the zeros the student came with
    start_sparsity = sparsity_of(masks)
    params, opt, sched, start = training_state(student, cfg, ckpt, resume)
    claim_dir(out, "recover", legacy=(RECORD, LOG, "checkpoint"))
    log_path = out / LOG
    truncate_jsonl(log_path, lambda rec: isinstance(rec.get("step"), int) and rec["step"] <= start)
    ckpt = out / "checkpoint"
    device = next(student.parameters()).device
    autocast = torch.autocast(device.type, dtype=TORCH_DTYPES[cfg.dtype], enabled=cfg.dtype != "fp32")
    t_hooks = _LayerOutputs(teacher.model.layers)
    s_hooks = _LayerOutputs(student.model.layers)
    student.train()
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            ids = batch_for_step(stream, step, cfg).to(device)
            with torch.no_grad(), autocast:
                t_logits = teacher(input_ids=ids, use_cache=False).logits
            t_hidden = [t_hooks.out[i] for i in layer_map]
            with autocast:
                s_logits = student(input_ids=ids, use_cache=False).logits
            terms = {}
            if cfg.hidden_weight:
                terms["hidden"] = squarehead_loss(s_hooks.out, t_hidden)
            if cfg.logit_weight:
                terms["kd"] = _kd_loss(s_logits, t_logits)
            if cfg.label_weight:
                terms["ce"] = F.cross_entropy(s_logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            weights = {"hidden": cfg.hidden_weight, "kd": cfg.logit_weight, "ce": cfg.label_weight}
            loss = sum(weights[k] * v for k, v in terms.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if masks:
                with torch.no_grad():
                    for lin, keep in masks.items():
                        lin.weight.mul_(keep)
            record = {"step": step + 1, "lr": sched.get_last_lr()[0], "loss": round(loss.item(), 5),
                      **{f"loss_{k}": round(v.item(), 5) for k, v in terms.items()},
                      "seconds": round(time.perf_counter() - t0, 3)}
            append_jsonl(log_path, record)
            if progress:
                progress(step + 1, cfg.steps, record)
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                _checkpoint(student, opt, params, cfg, step + 1, ckpt)
    finally:
        t_hooks.remove()
        s_hooks.remove()
    student.eval()
    move_in_model(student, tokenizer, out, markers)
    write_yaml(out / RECORD, {
        "version": 1, **source, "config": asdict(cfg),
        "sparsity": {"before": start_sparsity, "after": sparsity_of(masks)},
        "loss": _first_and_last(out / LOG),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    remove_checkpoints(out)
    return out


def carry_markers(student_dir: Path) -> Callable[[Path], None]:
    """Copy a student folder's hwnas markers (which base layers it keeps, its channel order, its
    pruning record) into the recovered folder."""

    def copy(folder: Path) -> None:
        for name in CARRIED:
            if (student_dir / name).is_file():
                shutil.copyfile(student_dir / name, folder / name)

    return copy


def _first_and_last(log: Path) -> dict:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
    return {"first": lines[0] if lines else None, "last": lines[-1] if lines else None}

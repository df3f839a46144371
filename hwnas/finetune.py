"""InstaTune-style fine-tuning of the super-network (LLaMA-NAS): train the shared weights so that
sub-networks inherit good ones.

Each step trains the full network and/or sub-networks *in place*: a sub-network is activated as a
view of the base model (kept layers only, each MLP using its first k channels), so its gradients
land on the shared weights. Rules:

- ``alternate`` (LLaMA-NAS): even steps the full network, odd steps a random sub-network;
- ``sandwich`` (BigNAS/OFA): every step the largest, the smallest and one random sub-network.

With ``kd`` the sub-networks learn from the full network's distribution on the same batch
(in-place distillation, KL at temperature 1) instead of from the labels.

Importance ordering is applied before training, so the saved folder's channels are ordered; it is
a valid `--model` for every command (`hwnas_order.json` says so). Checkpoints hold only tensors
(safetensors) and JSON: resuming needs no pickle.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .data import ALPACA, alpaca_texts, find_data_file
from .errors import HwnasUserError
from .fileio import append_jsonl, truncate_jsonl, write_json, write_yaml
from .space import FINETUNE_RECORD, SearchSpace
from .subnet import Subnet
from .supernet import ORDER_MARKER, Supernet

RULES = ("alternate", "sandwich")


@dataclass
class TrainingConfig:
    """What every training loop here shares (fine-tuning, recovery): batches, schedule, checkpoints."""

    steps: int = 200
    batch_size: int = 2
    seq_len: int = 256
    lr: float = 5e-5
    warmup: int = 10
    weight_decay: float = 0.0
    seed: int = 0
    data: str = "alpaca"
    save_every: int = 50
    freeze_embeddings: bool = True  # the tied 49k x 576 embedding is a third of SmolLM2's weights


@dataclass
class FinetuneConfig(TrainingConfig):
    rule: str = "alternate"
    kd: bool = True


def training_tokens(tokenizer, data: str, data_dir: str | Path | None = None) -> torch.Tensor:
    """All training text as one packed token stream (documents separated by EOS)."""
    if data == "alpaca":
        texts = alpaca_texts(find_data_file(ALPACA, data_dir))
    else:
        p = Path(data)
        if not p.is_file():
            raise HwnasUserError(f"fine-tuning data '{data}' is neither 'alpaca' nor a text/JSON file")
        texts = alpaca_texts(p) if p.suffix == ".json" else [p.read_text(encoding="utf-8")]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def batch_for_step(stream: torch.Tensor, step: int, cfg: TrainingConfig) -> torch.Tensor:
    """Deterministic in (seed, step): a resumed run sees the same batches."""
    n = stream.numel() // cfg.seq_len
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    picks = torch.randint(0, n, (cfg.batch_size,), generator=g).tolist()
    return torch.stack([stream[i * cfg.seq_len : (i + 1) * cfg.seq_len] for i in picks])


@contextlib.contextmanager
def activate(model, subnet: Subnet) -> Iterator[None]:
    """Run `model` as the sub-network, sharing (and training) its weights, until the block exits."""
    inner = model.model
    layers = inner.layers
    saved_forwards = []
    inner.layers = torch.nn.ModuleList([layers[i] for i in subnet.layers])
    n_saved = inner.config.num_hidden_layers
    inner.config.num_hidden_layers = subnet.depth
    try:
        for i, k in zip(subnet.layers, subnet.mlp_widths):
            mlp = layers[i].mlp
            if k >= mlp.gate_proj.out_features:
                continue
            saved_forwards.append((mlp, mlp.forward))
            mlp.forward = _sliced_mlp_forward(mlp, k)
        yield
    finally:
        for mlp, fwd in saved_forwards:
            mlp.forward = fwd
        inner.layers = layers
        inner.config.num_hidden_layers = n_saved


def _sliced_mlp_forward(mlp, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        g = F.linear(x, mlp.gate_proj.weight[:k], None if mlp.gate_proj.bias is None else mlp.gate_proj.bias[:k])
        u = F.linear(x, mlp.up_proj.weight[:k], None if mlp.up_proj.bias is None else mlp.up_proj.bias[:k])
        return F.linear(mlp.act_fn(g) * u, mlp.down_proj.weight[:, :k], mlp.down_proj.bias)

    return forward


smallest_subnet = Subnet.smallest  # the sandwich rule's smallest network (the name callers know)


def _kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    s = F.log_softmax(student_logits.float(), dim=-1)
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean")


def _save_optimizer(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], path: Path) -> None:
    tensors = {}
    steps = {}
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if not st:
            continue
        tensors[f"{i}.exp_avg"] = st["exp_avg"].contiguous()
        tensors[f"{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
        steps[str(i)] = float(st["step"])
    save_file(tensors, str(path / "optimizer.safetensors"))
    write_json(path / "optimizer.json", {"version": 1, "steps": steps})


def _load_optimizer(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], path: Path) -> None:
    tensors = load_file(str(path / "optimizer.safetensors"))
    steps = json.loads((path / "optimizer.json").read_text())["steps"]
    for i, p in enumerate(params):
        if str(i) in steps:
            opt.state[p] = {"step": torch.tensor(steps[str(i)]), "exp_avg": tensors[f"{i}.exp_avg"],
                            "exp_avg_sq": tensors[f"{i}.exp_avg_sq"]}


def finetune(sn: Supernet, space: SearchSpace, cfg: FinetuneConfig, out: str | Path, *,
             data_dir: str | Path | None = None, resume: bool = True,
             progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Fine-tune the super-network in place and write it to `out` (an HF folder usable as --model)."""
    if cfg.rule not in RULES:
        raise HwnasUserError(f"unknown rule '{cfg.rule}'; choose one of {RULES}")
    from .outdir import check_out, claim_dir

    out = check_out(out, "finetune", legacy=(FINETUNE_RECORD, "loss_log.jsonl", "checkpoint"))
    ckpt = resumable_checkpoint(out)
    model = sn.model
    tok = sn.base.tokenizer
    stream = training_tokens(tok, cfg.data, data_dir)
    if stream.numel() < cfg.seq_len * 4:
        raise HwnasUserError(f"fine-tuning data has only {stream.numel()} tokens")
    params, opt, sched, start = training_state(model, cfg, ckpt, resume)
    smallest = Subnet.smallest(space, sn.order.layer_scores if sn.order else None)
    full = sn.full_subnet()
    log_path = out / "loss_log.jsonl"
    claim_dir(out, "finetune", legacy=(FINETUNE_RECORD, "loss_log.jsonl", "checkpoint"))
    # steps logged after the checkpoint resumed from are trained again: drop their lines
    truncate_jsonl(log_path, lambda rec: isinstance(rec.get("step"), int) and rec["step"] <= start)
    ckpt = out / "checkpoint"
    model.train()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        rng = random.Random(cfg.seed * 7919 + step)
        ids = batch_for_step(stream, step, cfg)
        record: dict = {"step": step + 1, "lr": sched.get_last_lr()[0]}
        if cfg.rule == "sandwich":
            plan = [("full", full), ("smallest", smallest),
                    ("random", sn.parse_subnet(space.sample(rng), space=space))]
        else:
            plan = [("full", full)] if step % 2 == 0 else [("random", sn.parse_subnet(space.sample(rng), space=space))]
        teacher = None
        if cfg.kd and plan[0][0] != "full":
            with torch.no_grad():
                teacher = model(input_ids=ids, use_cache=False).logits.detach()
        opt.zero_grad(set_to_none=True)
        for name, sub in plan:
            with activate(model, sub):
                logits = model(input_ids=ids, use_cache=False).logits
            if name == "full" or not cfg.kd:
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
                if name == "full":
                    teacher = logits.detach()
            else:
                loss = _kd_loss(logits, teacher)
            (loss / len(plan)).backward()
            record[f"loss_{name}"] = round(loss.item(), 5)
            if name == "random":
                record["subnet"] = sub.to_dict()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        append_jsonl(log_path, record)
        if progress:
            progress(step + 1, cfg.steps, record)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            _checkpoint(model, opt, params, cfg, step + 1, ckpt)
    model.eval()
    _write_final(sn, cfg, out)
    remove_checkpoints(out)
    return out


def resumable_checkpoint(out: Path) -> Path:
    """The training folder's checkpoint to resume from: `checkpoint/`, or `checkpoint.old/` when a run
    was killed between the two renames of `_checkpoint`."""
    ckpt = out / "checkpoint"
    old = out / "checkpoint.old"
    return old if not (ckpt / "state.json").is_file() and (old / "state.json").is_file() else ckpt


def remove_checkpoints(out: Path) -> None:
    for done in (out / "checkpoint", out / "checkpoint.old"):
        shutil.rmtree(done, ignore_errors=True)


def move_in_model(model, tokenizer, out: Path, extra: Callable[[Path], None] | None = None) -> None:
    """Write the trained model (and tokenizer, and `extra(folder)`'s files) whole into `.final.tmp/`,
    then move it into `out` file by file; the caller writes its record after, last."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    for f in sorted(tmp.iterdir()):
        os.replace(f, out / f.name)
    tmp.rmdir()


def training_state(model, cfg: TrainingConfig, ckpt: Path, resume: bool):
    """The trained parameters, AdamW, the warm-up + cosine schedule and the step to start from: 0, or
    the checkpoint's (its weights and optimizer state loaded) when resuming with the same config."""
    if cfg.freeze_embeddings:
        model.model.embed_tokens.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if resume and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        if state["config"] != asdict(cfg):
            raise HwnasUserError(f"{ckpt} was written with a different configuration; use a new --out "
                                 "or the same options")
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
        _load_optimizer(opt, params, ckpt)
        start = state["step"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    for _ in range(start):
        sched.step()
    return params, opt, sched, start


def _lr_factor(step: int, cfg: TrainingConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _checkpoint(model, opt, params, cfg: TrainingConfig, step: int, ckpt: Path) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / "model.safetensors"))
    _save_optimizer(opt, params, tmp)
    write_json(tmp / "state.json", {"version": 1, "step": step, "config": asdict(cfg)})
    old = ckpt.with_name(ckpt.name + ".old")  # the previous checkpoint stays loadable until the new one is in place
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _write_final(sn: Supernet, cfg: FinetuneConfig, out: Path) -> None:
    from .importance import ChannelOrder, save_order

    order = sn.order
    move_in_model(sn.model, sn.base.tokenizer, out, lambda folder: save_order(ChannelOrder(
        mlp=[list(range(w)) for w in sn.base_widths], layer_scores=order.layer_scores if order else None,
        method=order.method if order else "none", meta={**(order.meta if order else {}), "applied": True}),
        folder / ORDER_MARKER))
    write_yaml(out / FINETUNE_RECORD, {
        "version": 1, "base": {"spec": sn.base.spec, "sha256": sn.base.source_hash},
        "config": asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

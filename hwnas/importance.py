"""Importance ordering of the super-network: MLP channels and layers, from calibration text.

Channels: each MLP's hidden activation h = act(gate(x)) * up(x) (the input of down_proj) is scored
per channel on calibration tokens, and gate/up rows and down columns are permuted so the first k
channels are the k most important (Minitron / OFA style). Methods:

- ``act``: mean |h_j|  (activation magnitude)
- ``contrib``: sqrt(mean h_j^2) * ||W_down[:, j]||  (the size of channel j's contribution to the output)
- ``taylor``: mean |h_j * dL/dh_j|  (first-order loss change when channel j is removed; needs backward)

Layers: block influence 1 - cos(x_in, x_out) averaged over tokens (ShortGPT): low influence means
the layer changes its input little and is the first candidate to drop.

An order is computed once and stored as a small JSON file (version 1; `docs/formats.md`) in the
hwnas cache, keyed by the base model's hash, the method and the calibration data.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .data import ALPACA, alpaca_texts, find_data_file
from .errors import HwnasUserError
from .fileio import write_json
from .model import LoadedModel, cache_root

if TYPE_CHECKING:
    from transformers import PreTrainedModel

METHODS = ("act", "contrib", "taylor")
ORDER_VERSION = 1
CALIBRATION_SOURCES: dict[str, str] = {
    # name -> data file; wikitext2 *valid* so that WikiText-2 *test* perplexity stays held out
    "wikitext2-valid": "wikitext2/wikitext-2-v1.valid.tokens.txt",
    "alpaca": ALPACA,
}


@dataclass(frozen=True)
class Calibration:
    """Which text and how much of it scores importance."""

    source: str = "wikitext2-valid"
    num_sequences: int = 64
    seq_len: int = 256
    seed: int = 0

    def key(self) -> str:
        return f"{self.source}-{self.num_sequences}x{self.seq_len}-s{self.seed}"


@dataclass
class ChannelOrder:
    """Per-layer permutation of MLP channels (most important first) and optional layer scores."""

    mlp: list[list[int]]
    layer_scores: list[float] | None = None
    method: str = "identity"
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, widths: Sequence[int]) -> ChannelOrder:
        return cls(mlp=[list(range(w)) for w in widths])

    @torch.no_grad()
    def apply_to(self, model: PreTrainedModel) -> None:
        """Permute every MLP's channels in place (the model computes the same function after)."""
        layers = model.model.layers
        if len(self.mlp) != len(layers):
            raise ValueError(f"channel order has {len(self.mlp)} layers, the model {len(layers)}")
        for layer, perm in zip(layers, self.mlp):
            mlp = layer.mlp
            idx = torch.as_tensor(perm, dtype=torch.long, device=mlp.gate_proj.weight.device)
            if sorted(perm) != list(range(mlp.gate_proj.out_features)):
                raise ValueError("a channel order must be a permutation of each layer's channels")
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight.copy_(lin.weight[idx])
                if lin.bias is not None:
                    lin.bias.copy_(lin.bias[idx])
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, idx])


def calibration_ids(tokenizer, calib: Calibration, data_dir: str | Path | None = None) -> torch.Tensor:
    """(num_sequences, seq_len) token ids drawn with a fixed seed from the calibration source."""
    if calib.source in CALIBRATION_SOURCES:
        path = find_data_file(CALIBRATION_SOURCES[calib.source], data_dir)
    else:
        path = Path(calib.source)
        if not path.is_file():
            raise HwnasUserError(
                f"calibration source '{calib.source}' is neither a file nor one of {sorted(CALIBRATION_SOURCES)}")
    if path.suffix == ".json":
        text = "\n\n".join(alpaca_texts(path))
    else:
        text = path.read_text(encoding="utf-8")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n_windows = ids.numel() // calib.seq_len
    if n_windows < calib.num_sequences:
        raise HwnasUserError(
            f"calibration text {path} has only {n_windows} windows of {calib.seq_len} tokens "
            f"(< {calib.num_sequences} requested)")
    g = torch.Generator().manual_seed(calib.seed)
    picks = torch.randperm(n_windows, generator=g)[: calib.num_sequences].sort().values
    return torch.stack([ids[i * calib.seq_len : (i + 1) * calib.seq_len] for i in picks.tolist()])


def score_model(model, ids: torch.Tensor, method: str = "contrib", batch_size: int = 8,
                progress: Callable[[int, int], None] | None = None) -> tuple[list[torch.Tensor], list[float]]:
    """Per-layer channel scores and per-layer block influence on the calibration batch."""
    if method not in METHODS:
        raise HwnasUserError(f"unknown importance method '{method}'; choose one of {METHODS}")
    layers = model.model.layers
    n = len(layers)
    abs_sum = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    sq_sum = [torch.zeros_like(a) for a in abs_sum]
    taylor = [torch.zeros_like(a) for a in abs_sum]
    infl_sum = [0.0] * n
    tokens = 0
    acts: dict[int, torch.Tensor] = {}
    hooks = []

    def mlp_hook(i: int):
        def hook(_mod, inputs):
            h = inputs[0]
            if method == "taylor":
                h.retain_grad()
                acts[i] = h
            flat = h.detach().reshape(-1, h.shape[-1]).double()
            abs_sum[i] += flat.abs().sum(0)
            sq_sum[i] += flat.pow(2).sum(0)
        return hook

    def layer_hook(i: int):
        def hook(_mod, args, kwargs, output):
            x_in = (args[0] if args else kwargs["hidden_states"]).detach()
            x_out = (output[0] if isinstance(output, tuple) else output).detach()
            infl_sum[i] += (1 - F.cosine_similarity(x_in.float(), x_out.float(), dim=-1)).sum().item()
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        hooks.append(layer.register_forward_hook(layer_hook(i), with_kwargs=True))
    try:
        for b in range(0, ids.shape[0], batch_size):
            batch = ids[b : b + batch_size]
            if method == "taylor":
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                    loss.backward()
                for i, h in acts.items():
                    taylor[i] += (h.detach() * h.grad).reshape(-1, h.shape[-1]).double().abs().sum(0)
                acts.clear()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(input_ids=batch, use_cache=False)
            tokens += batch.numel()
            if progress:
                progress(min(b + batch_size, ids.shape[0]), ids.shape[0])
    finally:
        for h in hooks:
            h.remove()
    scores = []
    for i, layer in enumerate(layers):
        if method == "act":
            s = abs_sum[i] / tokens
        elif method == "contrib":
            col_norm = layer.mlp.down_proj.weight.detach().double().norm(dim=0)
            s = (sq_sum[i] / tokens).sqrt() * col_norm
        else:
            s = taylor[i] / tokens
        scores.append(s.float())
    influence = [v / tokens for v in infl_sum]
    return scores, influence


def compute_order(base: LoadedModel, method: str = "contrib", calib: Calibration | None = None,
                  data_dir: str | Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ChannelOrder:
    """Score the base model on calibration text and return the permutation (most important first)."""
    calib = calib or Calibration()
    t0 = time.perf_counter()
    ids = calibration_ids(base.tokenizer, calib, data_dir)
    was_training = base.model.training
    base.model.eval()
    scores, influence = score_model(base.model, ids, method, progress=progress)
    base.model.train(was_training)
    perms = [torch.argsort(s, descending=True, stable=True).tolist() for s in scores]
    return ChannelOrder(mlp=perms, layer_scores=influence, method=method, meta={
        "version": ORDER_VERSION,
        "base_sha256": base.source_hash,
        "calibration": calib.key(),
        "dtype": base.dtype,
        "seconds": round(time.perf_counter() - t0, 2),
    })


def order_path(base: LoadedModel, method: str, calib: Calibration) -> Path:
    key = f"{base.source_hash}|{method}|{calib.key()}"
    if _is_json(calib.source):  # Alpaca records as the fine-tuning template formats them (not as before)
        key += "|alpaca-template"
    if base.dtype != "fp32":  # scored in another precision: its own order (fp32 orders keep their keys)
        key += f"|{base.dtype}"
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "orders" / f"{tag}.json"


def _is_json(source: str) -> bool:
    return CALIBRATION_SOURCES.get(source, source).endswith(".json")


def save_order(order: ChannelOrder, path: str | Path) -> None:
    write_json(path, {"version": ORDER_VERSION, "method": order.method, "meta": order.meta,
                      "layer_scores": order.layer_scores, "mlp": order.mlp})


def load_order(path: str | Path) -> ChannelOrder:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("version") != ORDER_VERSION:
        raise HwnasUserError(f"{path}: unsupported channel-order version {data.get('version')}")
    return ChannelOrder(mlp=data["mlp"], layer_scores=data.get("layer_scores"), method=data["method"],
                        meta=data.get("meta", {}))


def get_order(base: LoadedModel, method: str = "contrib", calib: Calibration | None = None,
              data_dir: str | Path | None = None, recompute: bool = False,
              progress: Callable[[int, int], None] | None = None) -> ChannelOrder:
    """The cached order for this base model, method and calibration, computed on first use."""
    calib = calib or Calibration()
    path = order_path(base, method, calib)
    if path.is_file() and not recompute:
        return load_order(path)
    order = compute_order(base, method, calib, data_dir, progress)
    save_order(order, path)
    return order


def layers_by_influence(order: ChannelOrder) -> list[int]:
    """Layer indices, least influential first (the first candidates to drop)."""
    if not order.layer_scores:
        raise ValueError("this channel order carries no layer scores")
    return sorted(range(len(order.layer_scores)), key=lambda i: order.layer_scores[i])

"""One-shot unstructured / N:M pruning of a sub-network with llm-compressor (SparseGPT, Wanda), on
calibration text from the data folder; magnitude pruning as the baseline to beat.

The pruned model is a sub-network materialized from the base (the full network when no sub-network
is given) whose decoder linears (attention and MLP projections) carry exact zeros; embeddings, norms
and the head stay dense. Per-layer sparsity is uniform, given per kept layer, or outlier-weighted
(OWL, arXiv 2310.05175: layers with more activation outliers are pruned less, the mean held at the
target) as llm-compressor computes it. The output is an HF model folder (`--model` for every
command; `hwnas recover --student` distils it; the `deepsparse` export keeps its zeros) with
`hwnas_sparsity.json`: the method, the options, the sparsity achieved per layer and per kind, the
calibration and the library versions."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import HwnasUserError

METHODS = ("sparsegpt", "wanda", "magnitude")
PROFILES = ("uniform", "owl")
RECORD = "hwnas_sparsity.json"
SPARSE_MODEL_AT = 0.25  # decoder linears with this fraction of exact zeros overall: a pruned model


@dataclass
class PruneConfig:
    method: str = "sparsegpt"
    sparsity: float = 0.5  # mean over the pruned linears (per-layer values: `layer_sparsity`)
    structure: str = "unstructured"  # or N:M, e.g. 2:4 (N zeros... as llm-compressor's mask_structure)
    profile: str = "uniform"  # or owl
    layer_sparsity: list[float] | None = None  # one value per kept layer (overrides sparsity/profile)
    owl_m: int = 5  # OWL: a weight is an outlier when its |W|*||X|| exceeds m x its layer's mean
    owl_lambda: float = 0.08  # OWL: per-layer sparsity stays within target +- lambda
    samples: int = 64  # calibration sequences
    seq_len: int = 512
    data: str = "alpaca"
    dampening: float = 0.01  # SparseGPT's Hessian dampening (fraction of its mean diagonal)
    seed: int = 0

    def check(self, depth: int) -> None:
        if self.method not in METHODS:
            raise HwnasUserError(f"unknown pruning method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.profile not in PROFILES:
            raise HwnasUserError(f"unknown sparsity profile '{self.profile}'; choose one of {', '.join(PROFILES)}")
        if not 0.0 < self.sparsity < 1.0:
            raise HwnasUserError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if self.layer_sparsity is not None:
            if len(self.layer_sparsity) != depth:
                raise HwnasUserError(f"--layer-sparsity gives {len(self.layer_sparsity)} values for {depth} layers")
            if not all(0.0 <= s < 1.0 for s in self.layer_sparsity):
                raise HwnasUserError("every --layer-sparsity value must be in [0, 1)")
        if self.structure != "unstructured":
            n, m = nm_structure(self.structure)
            if self.profile == "owl" or self.layer_sparsity is not None:
                raise HwnasUserError("an N:M structure fixes the sparsity of every layer: drop --profile/--layer-sparsity")
            self.sparsity = n / m
        if self.method == "magnitude" and self.profile == "owl":
            raise HwnasUserError("OWL needs calibration activations: use --method sparsegpt or wanda")


def nm_structure(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): N zeros in every M consecutive weights of a row."""
    try:
        n, m = (int(x) for x in text.split(":"))
    except ValueError:
        raise HwnasUserError(f"--structure must be 'unstructured' or N:M such as 2:4, got '{text}'") from None
    if not 0 < n < m:
        raise HwnasUserError(f"--structure {text}: need 0 < N < M")
    return n, m


def calibration_batches(tokenizer, cfg: PruneConfig, data_dir: str | Path | None) -> list[list[int]]:
    """`samples` windows of `seq_len` tokens from the packed calibration text (deterministic in seed)."""
    from .finetune import training_tokens

    stream = training_tokens(tokenizer, cfg.data, data_dir)
    n = stream.numel() // cfg.seq_len
    if n < 1:
        raise HwnasUserError(f"calibration data has only {stream.numel()} tokens (< --seq-len {cfg.seq_len})")
    g = torch.Generator().manual_seed(cfg.seed)
    picks = torch.randperm(n, generator=g)[: cfg.samples].tolist()
    return [stream[i * cfg.seq_len : (i + 1) * cfg.seq_len].tolist() for i in picks]


def decoder_linears(model) -> list[tuple[int, str, torch.nn.Linear]]:
    """(layer index, 'attention' | 'mlp', module) of every decoder linear: what pruning touches."""
    out = []
    for i, layer in enumerate(model.model.layers):
        for kind, block in (("attention", layer.self_attn), ("mlp", layer.mlp)):
            out.extend((i, kind, m) for m in block.modules() if isinstance(m, torch.nn.Linear))
    return out


def magnitude_prune(model, sparsity: float | list[float], structure: str = "unstructured") -> None:
    """Zero the smallest |w| of every decoder linear: a `sparsity` fraction per matrix (unstructured),
    or the N smallest of every M consecutive weights of a row (N:M)."""
    nm = None if structure == "unstructured" else nm_structure(structure)
    with torch.no_grad():
        for i, _kind, lin in decoder_linears(model):
            w = lin.weight
            if nm is not None:
                n, m = nm
                if w.shape[1] % m:
                    raise HwnasUserError(f"--structure {structure}: {w.shape[1]} input channels are not a multiple of {m}")
                groups = w.view(w.shape[0], -1, m)
                drop = groups.abs().topk(n, dim=-1, largest=False).indices
                groups.scatter_(-1, drop, 0.0)
                continue
            s = sparsity[i] if isinstance(sparsity, list) else sparsity
            k = int(s * w.numel())
            if k:
                cut = w.abs().flatten().kthvalue(k).values
                w.masked_fill_(w.abs() <= cut, 0.0)


@torch.no_grad()
def owl_layer_sparsity(model, batches: list[list[int]], target: float, m: float, lam: float) -> list[float]:
    """OWL's per-layer sparsity (Yin et al. 2023, as llm-compressor computes it): a layer's outlier
    ratio is the share of its |W_ij| * ||X_j|| scores above m x their mean; ratios are rescaled to
    [0, 2 lam] and each layer gets target - (ratio - mean ratio): more outliers, fewer zeros."""
    import numpy as np

    linears = decoder_linears(model)
    norms: dict[torch.nn.Linear, torch.Tensor] = {}

    def hook(mod, args):
        x = args[0].detach().float()
        norms[mod] = norms.get(mod, 0) + x.pow(2).sum(dim=tuple(range(x.dim() - 1)))

    handles = [lin.register_forward_pre_hook(hook) for _i, _k, lin in linears]
    try:
        for b in batches:
            model(input_ids=torch.tensor([b]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    scores: dict[int, list[torch.Tensor]] = {}
    for i, _kind, lin in linears:
        scores.setdefault(i, []).append((lin.weight.abs().float() * norms[lin].sqrt()[None, :]).flatten())
    ratios = []
    for i in sorted(scores):
        z = torch.cat(scores[i])
        ratios.append(100.0 * (z > z.mean() * m).sum().item() / z.numel())
    r = np.array(ratios)
    if r.max() > r.min():
        r = (r - r.min()) / (r.max() - r.min()) * lam * 2
    else:
        r = np.zeros_like(r)
    return [float(1.0 - (x - r.mean() + (1.0 - target))) for x in r]


def achieved_sparsity(model) -> dict:
    """Fraction of exact zeros: over all decoder linears, per kind, per layer."""
    zeros: dict = {"attention": 0, "mlp": 0}
    total: dict = {"attention": 0, "mlp": 0}
    per_layer: dict[int, list[int]] = {}
    for i, kind, lin in decoder_linears(model):
        z, n = int((lin.weight == 0).sum()), lin.weight.numel()
        zeros[kind] += z
        total[kind] += n
        acc = per_layer.setdefault(i, [0, 0])
        acc[0] += z
        acc[1] += n
    all_z, all_n = sum(zeros.values()), sum(total.values())
    return {"overall": round(all_z / all_n, 5),
            **{k: round(zeros[k] / total[k], 5) for k in zeros},
            "layers": [round(z / n, 4) for _, (z, n) in sorted(per_layer.items())]}


def _llmcompressor_oneshot(model, tokenizer, cfg: PruneConfig, batches: list[list[int]]) -> None:
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # its loguru lines go to stdout
    try:
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    except ImportError as e:
        raise HwnasUserError(f"--method {cfg.method} needs llm-compressor: pip install 'hwnas[sparse]' ({e})") from None
    kwargs: dict = {"targets": [r"re:.*layers\.\d+$"], "ignore": [r"re:.*lm_head"],
                    "mask_structure": "0:0" if cfg.structure == "unstructured" else cfg.structure}
    if cfg.layer_sparsity is not None:
        kwargs["sparsity"] = [float(s) for s in cfg.layer_sparsity]
    elif cfg.profile == "owl":
        # llm-compressor 0.14.0.1's own OWL profile fails (it runs calibration before its lifecycle is
        # initialized, and returns a dict its hooks do not read): the same ratios, computed here
        kwargs["sparsity"] = owl_layer_sparsity(model, batches, cfg.sparsity, cfg.owl_m, cfg.owl_lambda)
    else:
        kwargs["sparsity"] = cfg.sparsity
    if cfg.method == "sparsegpt":
        modifier = SparseGPTModifier(dampening_frac=cfg.dampening, **kwargs)
    else:
        modifier = WandaPruningModifier(**kwargs)
    dataset = Dataset.from_dict({"input_ids": batches, "attention_mask": [[1] * len(b) for b in batches]})
    tied = model.config.tie_word_embeddings
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hwnas-prune-") as cfg_dir:
        # oneshot re-reads the model's config from disk (model.config.name_or_path) to check that it
        # is not quantized; a materialized sub-network has no folder yet
        model.config.save_pretrained(cfg_dir)
        saved_name = model.config._name_or_path
        model.config._name_or_path = cfg_dir
        try:
            oneshot(model=model, processor=tokenizer, dataset=dataset, recipe=[modifier],
                    max_seq_length=cfg.seq_len, num_calibration_samples=len(batches),
                    shuffle_calibration_samples=False)
        finally:
            model.config._name_or_path = saved_name
    # oneshot wraps the instance's save_pretrained to write compressed-tensors' format: hwnas writes
    # plain dense tensors (zeros included) that every runtime and transformers read as they are
    model.__dict__.pop("save_pretrained", None)
    if tied and model.lm_head.weight is not model.model.embed_tokens.weight:
        model.lm_head.weight = model.model.embed_tokens.weight


def library_versions() -> dict:
    from .versions import dist_versions

    return dist_versions("llmcompressor", "compressed-tensors", "torch", "transformers")


def prune(model, tokenizer, cfg: PruneConfig, *, data_dir: str | Path | None = None,
          progress: Callable[[str], None] | None = None) -> dict:
    """Prune `model` in place; the record `hwnas_sparsity.json` holds."""
    cfg.check(len(model.model.layers))
    t0 = time.perf_counter()
    if cfg.method == "magnitude":
        magnitude_prune(model, cfg.layer_sparsity if cfg.layer_sparsity is not None else cfg.sparsity, cfg.structure)
        calib = None
    else:
        batches = calibration_batches(tokenizer, cfg, data_dir)
        if progress:
            progress(f"{cfg.method}: {len(batches)} calibration sequences of {cfg.seq_len} tokens ({cfg.data})")
        was_training = model.training
        model.eval()
        _llmcompressor_oneshot(model, tokenizer, cfg, batches)
        model.train(was_training)
        calib = {"data": cfg.data, "sequences": len(batches), "seq_len": cfg.seq_len}
    _strip_library_state(model)
    return {"version": 1, "config": asdict(cfg), "achieved": achieved_sparsity(model), "calibration": calib,
            "seconds": round(time.perf_counter() - t0, 1), "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_pruned(sn, subnet, model, tokenizer, record: dict, folder: Path) -> None:
    """The pruned model folder: weights, tokenizer, the sub-network markers and `hwnas_sparsity.json`
    (the `prune` record with the sub-network and the base it was cut from)."""
    from .fileio import write_json

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sn.write_markers(subnet, model, folder)
    write_json(Path(folder) / RECORD, {**record, "subnet": subnet.to_dict(),
                                       "base": {"spec": sn.base.spec, "sha256": sn.base.source_hash}})


def _strip_library_state(model) -> None:
    """llm-compressor leaves its own attributes on the model (a compression config that would make
    save_pretrained write compressed-tensors' format): keep plain dense-with-zeros tensors."""
    for attr in ("quantization_config", "sparsity_config"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)

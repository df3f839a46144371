"""The base model as a weight-sharing super-network, and sub-networks materialized from it.

A sub-network is a real, smaller model: the kept layers, and in each the first k MLP channels
(gate/up rows, down columns), copied out of the base. Before slicing, an optional `ChannelOrder`
permutes every MLP's channels so that "the first k" are the k most important; the permutation
leaves the base model's function unchanged. Computing a good order is `hwnas.importance`'s job
(the order's owner; this module depends on it, never the other way round).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import PreTrainedModel

from .fileio import write_json
from .importance import METHODS, ChannelOrder, get_order, load_order, save_order
from .model import LoadedModel
from .modeling import Family, mlp_widths_of, parameter_count
from .space import SearchSpace
from .subnet import Subnet

SUBNET_FILE = "hwnas_subnet.json"
ORDER_MARKER = "hwnas_order.json"  # channels already ordered; the order's layer scores


class Supernet:
    """A loaded base model treated as a super-network (kept in memory; materializes sub-networks)."""

    def __init__(self, base: LoadedModel, order: ChannelOrder | None = None) -> None:
        self.base = base
        self.model = base.model
        self.family: Family = base.family
        self.base_widths = mlp_widths_of(self.model)
        self.order = order
        if order is not None:
            order.apply_to(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.model.model.layers)

    @property
    def intermediate_size(self) -> int:
        return max(self.base_widths)

    def default_space(self) -> SearchSpace:
        """The model's default space (`SearchSpace.for_model`)."""
        return SearchSpace.for_model(self.base.spec, self.num_layers, self.intermediate_size)

    def parse_subnet(self, data: Any, space: SearchSpace | None = None, source: str = "subnet") -> Subnet:
        return Subnet.parse(data, num_layers=self.num_layers, intermediate_size=self.base_widths,
                            space=space, source=source)

    def load_subnet(self, path: str | Path, space: SearchSpace | None = None) -> Subnet:
        return Subnet.load(path, num_layers=self.num_layers, intermediate_size=self.base_widths, space=space)

    def full_subnet(self) -> Subnet:
        return Subnet(tuple(range(self.num_layers)), tuple(self.base_widths))

    def subnet_config(self, subnet: Subnet):  # a transformers config
        """The config of the smaller model: plain family class when widths are uniform."""
        base_cfg = self.model.config
        data = base_cfg.to_dict()
        for key in ("quantization_config", "intermediate_size_per_layer", "architectures",
                    "_name_or_path", "model_type", "transformers_version"):
            data.pop(key, None)
        n_base = base_cfg.num_hidden_layers
        for key, value in list(data.items()):  # per-layer lists (e.g. layer_types) follow the layers
            if isinstance(value, list) and len(value) == n_base and key not in ("eos_token_id",):
                data[key] = [value[i] for i in subnet.layers]
        data["num_hidden_layers"] = subnet.depth
        widths = list(subnet.mlp_widths)
        if len(set(widths)) == 1:
            data["intermediate_size"] = widths[0]
            return self.family.config_cls(**data)
        data["intermediate_size"] = max(widths)
        return self.family.hetero_config_cls(**data, intermediate_size_per_layer=widths)

    @torch.no_grad()
    def materialize(self, subnet: Subnet, *, share_weights: bool = False) -> PreTrainedModel:
        """A real smaller model. `share_weights=True` copies nothing it does not have to: the model's
        tensors are the base's own (views; a sliced gate/up is a view of its first rows) except a
        sliced down projection, which is copied to be contiguous. For read-only use (evaluation,
        saving, export): the memory of a sub-network is then a few percent of the base's, which is
        what lets a multi-billion-parameter base be sliced on a machine that holds it once.
        `share_weights=False`: every tensor copied (a model to train or prune in place)."""
        config = self.subnet_config(subnet)
        cls = (self.family.hetero_model_cls if getattr(config, "intermediate_size_per_layer", None)
               else self.family.model_cls)
        with init_empty_weights(include_buffers=False):
            model = cls(config)
        take = (lambda t: t) if share_weights else (lambda t: t.clone())
        src = self.model.model
        state: dict[str, torch.Tensor] = {}
        for name, t in src.named_parameters(recurse=True):
            if not name.startswith("layers."):
                state[f"model.{name}"] = take(t.detach())
        for new_i, (old_i, w) in enumerate(zip(subnet.layers, subnet.mlp_widths)):
            layer = src.layers[old_i]
            for name, t in layer.named_parameters():
                t = t.detach()
                if name.startswith("mlp.gate_proj") or name.startswith("mlp.up_proj"):
                    t = take(t[:w])  # the first rows: a contiguous view
                elif name == "mlp.down_proj.weight":
                    t = t[:, :w].contiguous() if share_weights else t[:, :w].clone()
                else:
                    t = take(t)
                state[f"model.layers.{new_i}.{name}"] = t
        if not config.tie_word_embeddings:
            state["lm_head.weight"] = take(self.model.lm_head.weight.detach())
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"materialize: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.generation_config = self.model.generation_config
        model.eval()
        return model

    def save_subnet(self, subnet: Subnet, out_dir: str | Path, model: PreTrainedModel | None = None) -> Path:
        """Write an HF folder (safetensors, config, tokenizer, hwnas_subnet.json) atomically."""
        from .outdir import check_out, replace_dir

        out = Path(out_dir)
        check_out(out, "subnet")
        model = model if model is not None else self.materialize(subnet, share_weights=True)
        with replace_dir(out, "subnet") as tmp:
            self._write_subnet(subnet, model, tmp)
        return out

    def _write_subnet(self, subnet: Subnet, model: PreTrainedModel, tmp: Path) -> None:
        model.save_pretrained(tmp)
        self.base.tokenizer.save_pretrained(tmp)
        self.write_markers(subnet, model, tmp)

    def write_markers(self, subnet: Subnet, model: PreTrainedModel, folder: Path) -> None:
        """`hwnas_subnet.json` (which base layers and widths `model` was cut from) and, when channels
        were ordered, `hwnas_order.json`: what makes a model folder a sub-network of this base."""
        tmp = Path(folder)
        write_json(tmp / SUBNET_FILE, {
            "version": 1,
            "subnet": subnet.to_dict(),
            "base": {"spec": self.base.spec, "source": self.base.source,
                     "sha256": self.base.source_hash, "mlp_widths": self.base_widths},
            "channel_order": None if self.order is None else self.order.method,
            "parameters": parameter_count(model),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        if self.order is not None:  # its channels are ordered already: record it, with the layer scores
            scores = self.order.layer_scores
            save_order(ChannelOrder(
                mlp=[list(range(w)) for w in subnet.mlp_widths],
                layer_scores=[scores[i] for i in subnet.layers] if scores else None,
                method=self.order.method,
                meta={**self.order.meta, "applied": True, "subnet_of": self.base.source_hash},
            ), tmp / ORDER_MARKER)



def stored_layer_scores(spec: str) -> list[float] | None:
    """The layer scores a folder whose channels were already ordered carries (`hwnas_order.json`,
    written by `hwnas finetune`), without loading the model; None for any other model."""
    marker = Path(spec) / ORDER_MARKER
    return load_order(marker).layer_scores if marker.is_file() else None


def open_supernet(spec: str, *, channel_order: str = "contrib", data_dir: str | Path | None = None,
                  progress: Any = None, dtype: str = "fp32") -> Supernet:
    """Load a base model as a super-network with its importance order applied (the default
    whenever sub-networks are materialized). `channel_order="none"` slices channels as stored.

    A folder whose channels were already ordered (written by `hwnas finetune`) says so in
    `hwnas_order.json` and is used as it is, with its stored layer scores. `dtype`: what the
    weights are held and run in (`hwnas.model.DTYPES`)."""
    from .model import load_model

    base = load_model(spec, dtype=dtype)
    if channel_order == "none":
        return Supernet(base)
    if channel_order not in METHODS:
        from .errors import HwnasUserError

        raise HwnasUserError(f"unknown channel order '{channel_order}'; choose one of {METHODS} or none")
    marker = Path(spec) / ORDER_MARKER
    if marker.is_file():
        stored = load_order(marker)
        sn = Supernet(base)
        sn.order = stored  # already applied to these weights
        return sn
    return Supernet(base, order=get_order(base, channel_order, data_dir=data_dir, progress=progress))

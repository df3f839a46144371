"""A decoder's shape read from its (transformers) config, in one place: the head size a config
leaves implicit (hidden / heads), and the key-value heads it may leave unset (= heads, no GQA).
Imports nothing, so measuring workers and graph builders can use it without transformers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    intermediate: int  # the config's `intermediate_size` (a per-layer-width model: its largest)
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        heads = int(config.num_attention_heads)
        return cls(int(config.hidden_size), heads, kv_heads(config), head_dim(config), int(config.num_hidden_layers),
                   int(config.intermediate_size), int(config.vocab_size))


def head_dim(config: Any) -> int:
    """Per-head size: the config's `head_dim` when it sets one, else hidden_size / heads."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def kv_heads(config: Any) -> int:
    """Key-value heads: the config's `num_key_value_heads` when set, else one per attention head."""
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)

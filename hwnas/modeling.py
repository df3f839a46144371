"""LLaMA-family models whose MLP width differs per layer.

transformers' configs hold one `intermediate_size`; a sub-network with per-layer widths keeps the
largest there and the per-layer list in `intermediate_size_per_layer`, under its own `model_type`
(`hwnas_llama`, ...). Importing hwnas registers these with the Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` loads them without remote code. A sub-network whose
widths are all equal is saved as the plain family class instead and loads anywhere.

Supported families are data (`FAMILIES`), not branches: add one entry to support another
architecture with the same decoder layout (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`).
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from .shape import head_dim as per_head
from .shape import kv_heads


class _PerLayerMLP:
    """Mixin: after the family's constructor, rebuild each layer's MLP at its own width."""

    def _rebuild_mlps(self) -> None:
        config = self.config
        widths = getattr(config, "intermediate_size_per_layer", None)
        if not widths:
            return
        if len(widths) != config.num_hidden_layers:
            raise ValueError(
                f"intermediate_size_per_layer has {len(widths)} entries for "
                f"{config.num_hidden_layers} layers"
            )
        bias = bool(getattr(config, "mlp_bias", False))
        hidden = config.hidden_size
        for layer, width in zip(self.model.layers, widths):
            mlp = layer.mlp
            if mlp.gate_proj.out_features == width:
                continue
            device, dtype = mlp.gate_proj.weight.device, mlp.gate_proj.weight.dtype
            mlp.gate_proj = nn.Linear(hidden, width, bias=bias, device=device, dtype=dtype)
            mlp.up_proj = nn.Linear(hidden, width, bias=bias, device=device, dtype=dtype)
            mlp.down_proj = nn.Linear(width, hidden, bias=bias, device=device, dtype=dtype)
            mlp.intermediate_size = width


@strict
class HwnasLlamaConfig(LlamaConfig):
    model_type = "hwnas_llama"
    intermediate_size_per_layer: list[int] | None = None


@strict
class HwnasMistralConfig(MistralConfig):
    model_type = "hwnas_mistral"
    intermediate_size_per_layer: list[int] | None = None


@strict
class HwnasQwen2Config(Qwen2Config):
    model_type = "hwnas_qwen2"
    intermediate_size_per_layer: list[int] | None = None


class HwnasLlamaForCausalLM(_PerLayerMLP, LlamaForCausalLM):
    config_class = HwnasLlamaConfig

    def __init__(self, config: HwnasLlamaConfig) -> None:
        super().__init__(config)
        self._rebuild_mlps()
        self.post_init()


class HwnasMistralForCausalLM(_PerLayerMLP, MistralForCausalLM):
    config_class = HwnasMistralConfig

    def __init__(self, config: HwnasMistralConfig) -> None:
        super().__init__(config)
        self._rebuild_mlps()
        self.post_init()


class HwnasQwen2ForCausalLM(_PerLayerMLP, Qwen2ForCausalLM):
    config_class = HwnasQwen2Config

    def __init__(self, config: HwnasQwen2Config) -> None:
        super().__init__(config)
        self._rebuild_mlps()
        self.post_init()


@dataclass(frozen=True)
class Family:
    """One supported architecture: its plain classes and their per-layer-width twins."""

    model_type: str
    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    hetero_config_cls: type[PretrainedConfig]
    hetero_model_cls: type[PreTrainedModel]
    qkv_bias: bool = False  # q/k/v projections always carry a bias (Qwen2), whatever the config says


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", LlamaConfig, LlamaForCausalLM, HwnasLlamaConfig, HwnasLlamaForCausalLM),
        Family(
            "mistral", MistralConfig, MistralForCausalLM, HwnasMistralConfig, HwnasMistralForCausalLM
        ),
        Family(
            "qwen2", Qwen2Config, Qwen2ForCausalLM, HwnasQwen2Config, HwnasQwen2ForCausalLM, True
        ),
    )
}
_BY_HETERO_TYPE = {f.hetero_config_cls.model_type: f for f in FAMILIES.values()}


def family_of(config: PretrainedConfig) -> Family | None:
    """The family a config belongs to (plain or per-layer-width variant), or None."""
    return FAMILIES.get(config.model_type) or _BY_HETERO_TYPE.get(config.model_type)


def mlp_widths_of(model: PreTrainedModel) -> list[int]:
    """The MLP width of every decoder layer, read from the weights themselves."""
    return [int(layer.mlp.gate_proj.out_features) for layer in model.model.layers]


def register_with_transformers() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` know the per-layer-width classes (idempotent)."""
    for fam in FAMILIES.values():
        AutoConfig.register(fam.hetero_config_cls.model_type, fam.hetero_config_cls, exist_ok=True)
        AutoModelForCausalLM.register(fam.hetero_config_cls, fam.hetero_model_cls, exist_ok=True)


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def analytic_parameter_count(config: PretrainedConfig, mlp_widths: list[int]) -> int:
    """Parameters a model of this shape must have, from the config alone (checks the slicing)."""
    h = config.hidden_size
    heads = config.num_attention_heads
    kv, head_dim = kv_heads(config), per_head(config)
    vocab = config.vocab_size
    attn_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    fam = family_of(config)
    qkv_bias = attn_bias or bool(fam and fam.qkv_bias)
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    if qkv_bias:
        attn += heads * head_dim + 2 * kv * head_dim
    if attn_bias:
        attn += h  # o_proj bias (llama's attention_bias covers all four projections)
    per_layer_fixed = attn + 2 * h  # two RMSNorms
    mlp = sum(3 * h * w + (2 * w + h if mlp_bias else 0) for w in mlp_widths)
    total = vocab * h + len(mlp_widths) * per_layer_fixed + mlp + h  # embeddings, layers, final norm
    if not config.tie_word_embeddings:
        total += vocab * h
    return total


class ParamCounter:
    """Exact parameter counts of sub-networks of one base shape, vectorised over many of them
    (depth and MLP widths are all that vary)."""

    def __init__(self, config: PretrainedConfig, bytes_per_param: int = 4) -> None:
        self.const = analytic_parameter_count(config, [])
        self.per_layer = analytic_parameter_count(config, [0]) - self.const
        self.per_channel = analytic_parameter_count(config, [1]) - self.const - self.per_layer
        self.bytes_per_param = bytes_per_param
        self.num_layers = config.num_hidden_layers
        self.norms = 2 * config.hidden_size  # per layer: the two RMSNorm weights (always fp32)
        self.vocab = config.vocab_size * config.hidden_size  # one vocabulary matrix
        self.vocab_matrices = 1 if getattr(config, "tie_word_embeddings", False) else 2  # in `const`

    def params(self, keep, widths):  # numpy (pop, layers) arrays
        """Parameters per row of a keep mask and per-layer widths (widths of dropped layers ignored)."""
        import numpy as np

        return self.const + keep.sum(1) * self.per_layer + np.where(keep, widths, 0).sum(1) * self.per_channel

    def of_widths(self, mlp_widths: list[int] | tuple[int, ...]) -> int:
        return int(self.const + len(mlp_widths) * self.per_layer + sum(mlp_widths) * self.per_channel)

    def weight_bytes(self, keep, widths, bits=None):  # numpy arrays
        """Bytes of weights per row. `bits`: None (every weight at `bytes_per_param`) or bits per
        weight as arrays (attention (pop, layers), MLP (pop, layers), embedding (pop,), head (pop,));
        with bits, norms stay fp32 and a tied head is counted once while both vocabulary matrices
        are fp32, apart once either is compressed (as runtimes store them)."""
        import numpy as np

        if bits is None:
            return self.params(keep, widths) * float(self.bytes_per_param)
        b_attn, b_mlp, b_embed, b_head = (np.asarray(b, dtype=float) / 8 for b in bits)
        rest = (self.const - self.vocab_matrices * self.vocab) * 4.0
        layers = np.where(keep, self.norms * 4.0 + (self.per_layer - self.norms) * b_attn
                          + widths * self.per_channel * b_mlp, 0.0).sum(1)
        shared = (self.vocab_matrices == 1) & (b_embed == 4) & (b_head == 4)
        return rest + layers + self.vocab * (b_embed + np.where(shared, 0.0, b_head))


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameter tensors (what a decode step must at least read)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


__all__ = [
    "FAMILIES",
    "ParamCounter",
    "Family",
    "analytic_parameter_count",
    "family_of",
    "mlp_widths_of",
    "parameter_count",
    "register_with_transformers",
    "state_dict_bytes",
]

register_with_transformers()  # idempotent; covers `import hwnas.modeling` being what imported transformers

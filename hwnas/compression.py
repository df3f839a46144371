"""Weight formats of the joint search: what each block's weights are stored as in the artifact, how
the target runtime computes with them, and a torch simulation of exactly that.

A `Compression` says, for one sub-network, the format of every kept layer's attention and MLP
weights, of the token embedding and of the LM head (`docs/formats.md`, key `compression` of a
sub-network). A format name ("fp32", "int8") is a gene value; what it *means* is the target
runtime's: a backend plugin declares the formats it runs as `Scheme`s (`Backend.WEIGHT_FORMATS`),
each the numerics its quantization library produces (ONNX Runtime `quantize_dynamic`: symmetric
int8 per output channel, activations quantized per tensor to uint8 at run time; its embedding
table: uint8 asymmetric per tensor). `simulate` reproduces a scheme in torch on a materialized
sub-network, so a compressed candidate is evaluated at about the cost of an fp32 one; the tests
check the simulated quantized weights against the library's, value for value.

Blocks of a sub-network's graph are named by `block_of(initializer name)`: `attn`/`mlp` of kept
layer j, `embed`, `head` — both for hwnas's composed graphs (`layer3/mlp.up.weight.T`) and for
dynamo exports (`model.layers.3.mlp.up_proj.weight`), so an exporter can apply a plan per block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import HwnasUserError

PLAIN = "fp32"  # uncompressed: the model's own weights
BLOCKS = ("attn", "mlp")  # per kept layer


# GGUF tensor types (llama.cpp): bits per weight with their block scales (Q8_0: 34 bytes per 32 weights)
GGUF_BITS = {"f32": 32.0, "f16": 16.0, "q8_0": 8.5, "q5_0": 5.5, "q4_0": 4.5}


def bits_of(fmt: str) -> float | None:
    """Bits per weight a format name says (fp32, fp16, bf16, intN; GGUF types with their scales:
    q8_0 8.5); None for anything else."""
    if fmt in ("fp32", "fp16", "bf16"):
        return int(fmt[2:])
    if fmt in GGUF_BITS:
        return GGUF_BITS[fmt]
    m = re.fullmatch(r"int([1-8])", fmt)
    return int(m.group(1)) if m else None


def compression_amount(fmt: str) -> float:
    """1 - bits / 32: 0 for fp32, 0.75 for int8 (a predictor feature)."""
    return 1.0 - (bits_of(fmt) or 32) / 32


class CompressionError(HwnasUserError):
    """A compression a runtime cannot run, or a malformed `compression` record."""


@dataclass(frozen=True)
class Scheme:
    """How one runtime stores weights of one format and computes with them.

    `bits`/`symmetric`/`group_size` (None: one scale per output channel, 0: one per tensor) are the
    weight quantization; `activations` "dynamic-u8" means inputs of the quantized matrix products
    are quantized per tensor to uint8 (asymmetric, range including 0) at run time, as ONNX
    Runtime's DynamicQuantizeLinear does. `embed` overrides the scheme for the embedding table
    (ONNX Runtime quantizes a Gather's table per tensor, uint8 asymmetric).

    `ggml` names a GGUF tensor type (llama.cpp): the weights are then stored by ggml's own
    quantizer (`hwnas.gguf_writer.roundtrip`, value for value what llama.cpp reads), and
    `activations` "ggml-q8_0" quantizes inputs in blocks of 32 (one fp16 scale each) as ggml's CPU
    matrix products do for Q8_0/Q5_0/Q4_0 weights, "fp16" rounds them to half as for F16 weights.

    `full_range` (symmetric blockwise weights as MLAS stores them for ONNX Runtime's MatMulNBits):
    each block's scale is its largest-magnitude weight divided by -2^(bits-1), so that weight maps to
    -2^(bits-1) and the others round into [-2^(bits-1), 2^(bits-1) - 1]. `activations` "block-s8"
    quantizes inputs in blocks of `group_size` to int8 (scale max|x| / 127, kept fp32), as
    MatMulNBits with accuracy_level 4 does before its integer product."""

    name: str
    bits: int = 8
    symmetric: bool = True
    group_size: int | None = None
    activations: str | None = None
    embed: Scheme | None = None
    description: str = ""
    ggml: str | None = None
    full_range: bool = False

    @property
    def compressed(self) -> bool:
        return self.bits < 32

    def fake_weight(self, w: Any) -> Any:  # torch.Tensor [out, in]
        """Quantize and dequantize a [out, in] weight the way the runtime's library stores it."""
        import torch

        if not self.compressed:
            return w
        w = w.detach().float()
        if self.ggml:
            from .gguf_writer import roundtrip

            return torch.from_numpy(roundtrip(w.cpu().numpy(), self.ggml)).to(w.device)
        if self.group_size == 0:
            axis_view = w.reshape(1, -1)
        elif self.group_size:
            out, inp = w.shape
            if inp % self.group_size:
                raise CompressionError(f"group size {self.group_size} does not divide {inp}")
            axis_view = w.reshape(out * inp // self.group_size, self.group_size)
        else:
            axis_view = w
        lo = axis_view.amin(1, keepdim=True).clamp(max=0)
        hi = axis_view.amax(1, keepdim=True).clamp(min=0)
        if self.symmetric and self.full_range:
            half = 2 ** (self.bits - 1)
            peak = torch.gather(axis_view, 1, axis_view.abs().argmax(1, keepdim=True))
            scale = peak / -half
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            deq = torch.round(axis_view / scale).clamp(-half, half - 1) * scale
        elif self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1  # ORT's symmetric int8 range is [-127, 127]
            absmax = torch.maximum(-lo, hi).double()
            scale = (2 * absmax / (2 * qmax)).float()
            scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
            q = torch.round(axis_view / scale).clamp(-qmax, qmax)
            deq = q * scale
        else:
            qmax = 2**self.bits - 1
            scale = ((hi.double() - lo.double()) / qmax).float()
            scale = torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale)
            zp = torch.round(-lo / scale).clamp(0, qmax)
            q = (torch.round(axis_view / scale) + zp).clamp(0, qmax)
            deq = (q - zp) * scale
        return deq.reshape(w.shape)

    def fake_activation(self, x: Any) -> Any:
        """DynamicQuantizeLinear as a decoding runtime sees it: each token's vector alone (one
        token per step through the KV cache, which is how generation runs and how hwnas scores an
        artifact), uint8, scale = (max(x, 0) - min(x, 0)) / 255. A prefill of many tokens shares
        one scale across them in the runtime, which is coarser (see docs/results.md)."""
        import torch

        if self.activations == "fp16":
            return x.half().to(x.dtype)
        if self.activations == "ggml-q8_0":
            return _block_q8(x, 32, half_scale=True)
        if self.activations == "block-s8":
            return _block_q8(x, self.group_size, half_scale=False)
        if self.activations != "dynamic-u8":
            return x
        flat = x.reshape(-1, x.shape[-1])
        lo = flat.amin(1, keepdim=True).clamp(max=0)
        hi = flat.amax(1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / 255
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round(-lo / scale).clamp(0, 255)
        q = (torch.round(flat / scale) + zp).clamp(0, 255)
        return ((q - zp) * scale).reshape(x.shape).to(x.dtype)


def _block_q8(x: Any, block: int, half_scale: bool) -> Any:
    """Symmetric int8 in blocks of `block` along the last axis and back: d = max|x| / 127,
    q = round(x / d); ggml's quantize_row_q8_0 (block 32, d stored as fp16: `half_scale`) and MLAS's
    int8 quantization of MatMulNBits inputs (d kept fp32)."""
    import torch

    n = x.shape[-1]
    if n % block:
        return x
    blocks = x.float().reshape(*x.shape[:-1], n // block, block)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    q = torch.round(blocks * inv)
    d = d.half().float() if half_scale else d
    return (q * d).reshape(x.shape).to(x.dtype)


@dataclass(frozen=True)
class Compression:
    """Per-block weight formats of one sub-network: `attn[i]`, `mlp[i]` of its i-th kept layer."""

    attn: tuple[str, ...]
    mlp: tuple[str, ...]
    embed: str = PLAIN
    head: str = PLAIN

    @classmethod
    def uniform(cls, fmt: str, depth: int) -> Compression:
        return cls((fmt,) * depth, (fmt,) * depth, fmt, fmt)

    @property
    def plain(self) -> bool:
        return set(self.formats()) <= {PLAIN}

    def formats(self) -> list[str]:
        return [*self.attn, *self.mlp, self.embed, self.head]

    def format_of(self, block: str, index: int | None = None) -> str:
        if block in ("embed", "head"):
            return getattr(self, block)
        return getattr(self, block)[index]

    def to_dict(self) -> dict[str, Any]:
        return {"attn": list(self.attn), "mlp": list(self.mlp), "embed": self.embed, "head": self.head}

    def summary(self) -> str:
        """e.g. 'int8 x60, fp32 x2' (counts over the blocks)."""
        from collections import Counter

        return ", ".join(f"{k} x{v}" for k, v in Counter(self.formats()).most_common())

    @classmethod
    def parse(cls, data: Any, depth: int, source: str = "compression") -> Compression:
        def fail(msg: str) -> CompressionError:
            return CompressionError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise fail('must be an object like {"attn": [...], "mlp": [...], "embed": "int8", "head": "int8"}')
        unknown = sorted(set(data) - {"attn", "mlp", "embed", "head"})
        if unknown:
            raise fail(f"unknown keys {unknown}; expected attn, mlp, embed, head")
        lists = {}
        for key in BLOCKS:
            v = data.get(key, [PLAIN] * depth)
            if isinstance(v, str):
                v = [v] * depth
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise fail(f'"{key}" must be a list of format names (one per kept layer) or one name')
            if len(v) != depth:
                raise fail(f'"{key}" has {len(v)} entries but the sub-network keeps {depth} layers')
            lists[key] = tuple(v)
        ends = {}
        for key in ("embed", "head"):
            v = data.get(key, PLAIN)
            if not isinstance(v, str) or not v:
                raise fail(f'"{key}" must be a format name')
            ends[key] = v
        return cls(lists["attn"], lists["mlp"], ends["embed"], ends["head"])

    def check(self, schemes: Mapping[str, Scheme], runtime: str) -> None:
        """Every format named must be one the runtime runs."""
        check_formats(self.formats(), schemes, runtime)


def check_formats(formats: Iterable[str], schemes: Mapping[str, Any], runtime: str,
                  error: type[HwnasUserError] = CompressionError) -> None:
    """Refuse, in one line, weight formats the runtime (`schemes`: its `WEIGHT_FORMATS`) does not run."""
    bad = sorted(set(formats) - set(schemes) - {PLAIN})
    if bad:
        raise error(f"{runtime} does not run weight format(s) {bad}; it runs {', '.join(sorted({PLAIN, *schemes}))}")


def schemes_of(backend: str) -> dict[str, Scheme]:
    """The weight formats a backend plugin declares it runs (`Backend.WEIGHT_FORMATS`)."""
    from hwnas.measure.backend import backend_class

    return dict(backend_class(backend).WEIGHT_FORMATS)


# --- blocks of a graph ------------------------------------------------------------------------

_BLOCK_PATTERNS = (
    (re.compile(r"^layer(\d+)/attn\."), "attn"),  # hwnas composed graphs
    (re.compile(r"^layer(\d+)/mlp\."), "mlp"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn)\."), "attn"),  # dynamo exports, HF names
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\."), "mlp"),
    (re.compile(r"^embed/|embed_tokens"), "embed"),
    (re.compile(r"^final/lm_head|(?:^|\.)lm_head\."), "head"),
)


def block_of(name: str) -> tuple[str, int | None] | None:
    """Which block a weight initializer of a sub-network's graph belongs to: ("attn", j),
    ("mlp", j), ("embed", None), ("head", None); None for anything else (norms, constants)."""
    for pattern, block in _BLOCK_PATTERNS:
        m = pattern.search(name)
        if m:
            return block, (int(m.group(1)) if m.groups() else None)
    return None


def weight_plan(weights: Compression | str | None):  # -> Callable[[str], str]
    """Initializer name -> the format it is stored in: per block for a Compression (fp32 for what
    is in no block: norms, constants), one format for every weight for a name (an operator block,
    or a uniformly compressed network), fp32 for None."""
    if weights is None or isinstance(weights, str):
        fmt = weights or PLAIN
        return lambda _name: fmt

    def plan(name: str) -> str:
        where = block_of(name)
        return PLAIN if where is None else weights.format_of(*where)

    return plan


# --- simulation -------------------------------------------------------------------------------

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def simulate(model: Any, compression: Compression | None, schemes: Mapping[str, Scheme]) -> Any:
    """Make `model` (a materialized transformers sub-network) compute as the runtime would with
    these per-block formats: its weights replaced by quantized-dequantized copies (new tensors, so
    weights shared with the super-network are untouched) and, for schemes that quantize
    activations, a pre-hook on each affected linear layer. Returns the same model."""
    import torch
    from torch import nn

    if compression is None or compression.plain:
        return model
    compression.check(schemes, "this runtime")
    layers = model.model.layers
    if len(compression.attn) != len(layers):
        raise CompressionError(f"compression lists {len(compression.attn)} layers, the model has {len(layers)}")

    def apply(linear: nn.Linear, fmt: str) -> None:
        if fmt == PLAIN:
            return
        scheme = schemes[fmt]
        linear.weight = nn.Parameter(scheme.fake_weight(linear.weight), requires_grad=False)
        if scheme.activations:
            linear.register_forward_pre_hook(lambda _m, args, s=scheme: (s.fake_activation(args[0]), *args[1:]))

    with torch.no_grad():
        embed, head = model.model.embed_tokens, model.lm_head
        tied = head.weight is embed.weight
        base_table = embed.weight
        if compression.embed != PLAIN:
            scheme = schemes[compression.embed]
            scheme = scheme.embed or scheme
            embed.weight = nn.Parameter(scheme.fake_weight(base_table), requires_grad=False)
        if compression.head != PLAIN:
            head.weight = nn.Parameter(base_table if tied else head.weight, requires_grad=False)
            apply(head, compression.head)
        elif tied and compression.embed != PLAIN:
            head.weight = nn.Parameter(base_table, requires_grad=False)  # the head keeps fp32 weights
        for j, layer in enumerate(layers):
            for name in _ATTN:
                apply(getattr(layer.self_attn, name), compression.attn[j])
            for name in _MLP:
                apply(getattr(layer.mlp, name), compression.mlp[j])
    return model


# --- which blocks tolerate fewer bits -----------------------------------------------------------

def block_sensitivity(model_factory: Any, schemes: Mapping[str, Scheme], high: str, low: str,
                      ids: Any) -> list[tuple[str, int | None, float]]:
    """How much each block of the full network costs when stored in `low` instead of `high`
    (every other block in `high`): the increase of the mean negative log-likelihood on `ids`
    ([batch, tokens] calibration text) with that one block in `low`. Blocks are `attn`/`mlp` of each
    layer and the `head` (the embedding is a table lookup: its format costs no time per token).
    Returns (block, layer or None, increase), least sensitive first.

    `model_factory()` gives a fresh materialized full network (weights shared with the super-network
    are never touched: `simulate` makes new tensors). Both simulated networks are built once, and a
    block is moved from one to the other by swapping its module (weights and activation hooks
    together), so the cost is one forward pass per block."""
    import torch

    depth = len(model_factory().model.layers)
    hi = simulate(model_factory(), Compression.uniform(high, depth), schemes).eval()
    lo = simulate(model_factory(), Compression.uniform(low, depth), schemes).eval()

    @torch.no_grad()
    def nll() -> float:
        logits = hi(input_ids=ids).logits[:, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))

    ref = nll()
    out: list[tuple[str, int | None, float]] = []
    for j in range(depth):
        for block, attr in (("attn", "self_attn"), ("mlp", "mlp")):
            keep = getattr(hi.model.layers[j], attr)
            setattr(hi.model.layers[j], attr, getattr(lo.model.layers[j], attr))
            out.append((block, j, nll() - ref))
            setattr(hi.model.layers[j], attr, keep)
    keep = hi.lm_head
    hi.lm_head = lo.lm_head
    out.append(("head", None, nll() - ref))
    hi.lm_head = keep
    return sorted(out, key=lambda t: t[2])


def mixed_ladder(depth: int, order: list[tuple[str, int | None, float]], high: str, low: str,
                 counts: Iterable[int]) -> list[Compression]:
    """For each k in `counts`: every block in `high` but the k least sensitive (`order`, from
    `block_sensitivity`) in `low` — the greedy mixed-precision recipe (as HAWQ-style allocations
    and llama.cpp's per-tensor type choices do), with the embedding in `high`."""
    out = []
    for k in counts:
        attn, mlp, head = [high] * depth, [high] * depth, high
        for block, j, _ in order[:k]:
            if block == "attn":
                attn[j] = low
            elif block == "mlp":
                mlp[j] = low
            else:
                head = low
        out.append(Compression(tuple(attn), tuple(mlp), high, head))
    return out

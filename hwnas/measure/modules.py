"""The graphs every runtime measures, as torch modules with an explicit KV cache: a whole
(sub-)network (`CausalLMWithPast`) and the operator blocks of a device profile (`AttentionBlock`,
`MLPBlock`, `HeadBlock`), with `GraphIO`, what a graph takes and returns.

Every graph here has one calling convention, `forward(x, *past) -> (y, *present)`:
`x` is token ids `[B, T]` (int64) or hidden states `[B, T, H]`; `past` is zero or more cache tensors
`[B, kv_heads, P, head_dim]` (key then value, per layer) and `present` are the same tensors with the
T new positions appended. A whole model is one graph for prefill (P = 0) and decode (T = 1).

The attention is written out here (projections, RoPE, cache concatenation, SDPA) on the model's own
modules instead of calling transformers' forward: transformers 5's cache update concatenates onto an
empty tensor that OpenVINO cannot convert, and an explicit cache also exports cleanly with
`torch.onnx.export(dynamo=True)`. Prefill returns the logits of the last position only (what
generation needs; the full `[B, T, vocab]` LM head would dominate a short prefill). Runtime plugins
convert these modules (`hwnas_backends.onnx_export` to ONNX and OpenVINO; llama.cpp writes the
network's GGUF).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.shape import head_dim, kv_heads

KV_INPUT = "past_{kind}_{layer}"
KV_OUTPUT = "present_{kind}_{layer}"


def _rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    def rot(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


class AttentionBlock(nn.Module):
    """input norm + q/k/v + RoPE + cache concat + SDPA + o_proj + residual, on one decoder layer."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, config) -> None:
        super().__init__()
        self.norm = layer.input_layernorm
        self.attn = layer.self_attn
        self.rotary = rotary
        self.heads = config.num_attention_heads
        self.kv_heads, self.head_dim = kv_heads(config), head_dim(config)
        self.scaling = self.head_dim ** -0.5

    def forward(self, h: torch.Tensor, *past: torch.Tensor):
        past_k, past_v = past if past else (None, None)
        b, t, _ = h.shape
        x = self.norm(h)
        q = self.attn.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.attn.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.attn.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        p = 0 if past_k is None else past_k.shape[2]
        pos = (torch.arange(t, device=h.device) + p).unsqueeze(0).expand(b, t)
        cos, sin = self.rotary(x, pos)
        q, k = _rope(q, k, cos, sin)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        s = k.shape[2]
        rep = self.heads // self.kv_heads
        kr = k[:, :, None].expand(b, self.kv_heads, rep, s, self.head_dim).reshape(b, self.heads, s, self.head_dim)
        vr = v[:, :, None].expand(b, self.kv_heads, rep, s, self.head_dim).reshape(b, self.heads, s, self.head_dim)
        q_pos = torch.arange(t, device=h.device) + (s - t)
        mask = torch.arange(s, device=h.device)[None, :] <= q_pos[:, None]
        out = F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask, scale=self.scaling)
        out = out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return h + self.attn.o_proj(out), k, v


class MLPBlock(nn.Module):
    """post-attention norm + gated MLP + residual (optionally sliced to the first `width` channels)."""

    def __init__(self, layer: nn.Module, width: int | None = None) -> None:
        super().__init__()
        self.norm = layer.post_attention_layernorm
        mlp = layer.mlp
        full = mlp.gate_proj.out_features
        self.width = width or full
        if self.width == full:
            self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        else:
            self.gate = _slice_linear(mlp.gate_proj, rows=self.width)
            self.up = _slice_linear(mlp.up_proj, rows=self.width)
            self.down = _slice_linear(mlp.down_proj, cols=self.width)
        self.act = mlp.act_fn

    def forward(self, h: torch.Tensor, *unused: torch.Tensor):
        x = self.norm(h)
        return (h + self.down(self.act(self.gate(x)) * self.up(x)),)


def _slice_linear(lin: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
    w = lin.weight.detach()
    w = w[:rows] if rows is not None else w[:, :cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None and rows is not None)
    with torch.no_grad():
        out.weight.copy_(w)
        if lin.bias is not None:
            out.bias.copy_(lin.bias.detach()[:rows] if rows is not None else lin.bias.detach())
    return out


class HeadBlock(nn.Module):
    """token embedding + final norm + LM head at the last position (the non-layer work of a step).
    A tied head gets its own copy of the table, as in a whole model's graph (the composed graph
    stores the embedding and the transposed head apart), so a quantizer treats the block's two
    matrices as it treats the whole model's (one shared initializer was quantized as a Gather table
    and fed the head MatMul through a run-time dequantize: 2.6x slower than the whole model's head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.embed = model.model.embed_tokens
        self.norm = model.model.norm
        self.lm_head = model.lm_head
        if self.lm_head.weight is self.embed.weight:
            self.lm_head = nn.Linear(self.lm_head.in_features, self.lm_head.out_features, bias=False)
            self.lm_head.weight = nn.Parameter(self.embed.weight.detach().clone(), requires_grad=False)

    def forward(self, ids: torch.Tensor, *unused: torch.Tensor):
        h = self.embed(ids)
        return (self.lm_head(self.norm(h[:, -1:])),)


class CausalLMWithPast(nn.Module):
    """A whole (sub-)network as `forward(ids, *past) -> (last logits, *present)`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cfg = model.config
        self.config = cfg  # the architecture (onnx_compose keys its templates on it)
        self.embed = model.model.embed_tokens
        self.attn = nn.ModuleList(AttentionBlock(layer, model.model.rotary_emb, cfg) for layer in model.model.layers)
        self.mlp = nn.ModuleList(MLPBlock(layer) for layer in model.model.layers)
        self.norm = model.model.norm
        self.lm_head = model.lm_head

    def forward(self, ids: torch.Tensor, *past: torch.Tensor):
        h = self.embed(ids)
        present: list[torch.Tensor] = []
        for i, (attn, mlp) in enumerate(zip(self.attn, self.mlp)):
            h, k, v = attn(h, *past[2 * i: 2 * i + 2])
            (h,) = mlp(h)
            present += [k, v]
        return (self.lm_head(self.norm(h[:, -1:])), *present)


@dataclass(frozen=True)
class GraphIO:
    """What a graph takes and returns: enough to make inputs and name tensors for any runtime."""

    x_kind: str  # "ids" or "hidden"
    hidden_size: int
    vocab_size: int
    n_layers_past: int  # layers whose K/V cache is an input (0: no cache)
    kv_heads: int
    head_dim: int

    @property
    def input_names(self) -> list[str]:
        return ["input_ids" if self.x_kind == "ids" else "hidden"] + self.past_names

    @property
    def past_names(self) -> list[str]:
        return [KV_INPUT.format(kind=k, layer=i) for i in range(self.n_layers_past) for k in ("key", "value")]

    @property
    def output_names(self) -> list[str]:
        y = "logits" if self.x_kind == "ids" else "hidden_out"
        return [y] + [KV_OUTPUT.format(kind=k, layer=i) for i in range(self.n_layers_past)
                      for k in ("key", "value")]

    def make_x(self, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if self.x_kind == "ids":
            return torch.randint(0, self.vocab_size, (batch, tokens), generator=g)
        return torch.randn(batch, tokens, self.hidden_size, generator=g)

    def make_past(self, batch: int, context: int, seed: int = 1) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        shape = (batch, self.kv_heads, context, self.head_dim)
        return [torch.randn(*shape, generator=g) for _ in range(2 * self.n_layers_past)]

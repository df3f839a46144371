"""Export-friendly graphs of a LLaMA-family decoder with an explicit KV cache, and their conversion.

Every graph here has one calling convention, `forward(x, *past) -> (y, *present)`:
`x` is token ids `[B, T]` (int64) or hidden states `[B, T, H]`; `past` is zero or more cache tensors
`[B, kv_heads, P, head_dim]` (key then value, per layer) and `present` are the same tensors with the
T new positions appended. A whole model is one graph for prefill (P = 0) and decode (T = 1).

The attention is written out here (projections, RoPE, cache concatenation, SDPA) on the model's own
modules instead of calling transformers' forward: transformers 5's cache update concatenates onto an
empty tensor that OpenVINO cannot convert, and an explicit cache also exports cleanly with
`torch.onnx.export(dynamo=True)`. Prefill returns the logits of the last position only (what
generation needs; the full `[B, T, vocab]` LM head would dominate a short prefill).

Reused by the export issue to write deployable ONNX (past key values) and stateful OpenVINO IR.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

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


def _dynamic_shapes(io: GraphIO):
    from torch.export import Dim

    batch, seq, past = Dim("batch", min=1, max=64), Dim("seq", min=1, max=32768), Dim("past", min=0, max=32768)
    x = {0: batch, 1: seq}
    return (x, tuple({0: batch, 2: past} for _ in io.past_names))  # *past arrives as one tuple


def export_onnx(module: nn.Module, io: GraphIO, path: str | Path, *, with_past: bool = True,
                opset: int | None = None, ir_version: int | None = None, compose: bool | None = None,
                external_data: bool | None = None) -> Path:
    """Export with `torch.onnx.export(dynamo=True)`: dynamic batch, tokens and past length.
    `with_past=False` writes a prefill-only graph (no cache inputs; presents still returned) for
    static-shape runtimes that cannot take a zero-length past. `opset` / `ir_version` pin older
    formats for older runtimes (deepsparse 1.8's ORT reads IR <= 9). A whole model with a cache
    is composed from cached block templates (`onnx_compose`, seconds) unless `compose=False` (or
    $HWNAS_GRAPH_COMPOSE=0: a full dynamo export, the reference the composed graph is checked against);
    `external_data=True` keeps a composed graph's weights in `graph.onnx.data` (faster to write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from hwnas.measure.graphs import compose_enabled

    if compose_enabled(compose) and isinstance(module, CausalLMWithPast) and with_past and opset is None \
            and ir_version is None:
        from .onnx_compose import ComposeError, compose_onnx

        try:
            return compose_onnx(module, io, path, external_data=external_data)  # seconds, not a re-trace
        except ComposeError:
            pass
    past = io.make_past(2, 4) if with_past else []
    example = (io.make_x(2, 3), *past)  # sizes >= 2 so no dimension is specialized
    dyn = _dynamic_shapes(io)
    if not past:  # empty *past is not an input at all
        dyn = (dyn[0],)
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(module, example, str(tmp), dynamo=True, dynamic_shapes=dyn,
                          input_names=io.input_names[: 1 + len(past)], output_names=io.output_names,
                          external_data=False, verbose=False, optimize=True, opset_version=opset)
    if ir_version is not None:
        import onnx

        proto = onnx.load(str(tmp))
        proto.ir_version = min(proto.ir_version, ir_version)
        onnx.save(proto, str(tmp))
    shutil.move(tmp, path)
    return path


def convert_openvino(module: nn.Module, io: GraphIO, *, stateful: bool = True,
                     compose: bool | None = None):
    """An OpenVINO model of the module: a whole model is read from its composed ONNX graph
    (seconds; `compose` as in `export_onnx`), a block by `ov.convert_model` from the module; with a
    cache, made stateful (the cache lives in the runtime's variables and only `x` crosses the API).
    fp32 is kept: pass the result to `save_openvino` (which does not compress to fp16) to write it."""
    import openvino as ov

    from hwnas.measure.graphs import compose_enabled

    if compose_enabled(compose) and isinstance(module, CausalLMWithPast):  # a whole model: composed ONNX
        from .onnx_compose import ComposeError, compose_onnx

        try:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="hwnas-ov-") as tmp:
                path = compose_onnx(module, io, Path(tmp) / "graph.onnx", external_data=True)
                model = ov.Core().read_model(str(path))
                return finish_openvino(model, io, stateful=stateful)
        except ComposeError:
            pass
    example = (io.make_x(2, 3), *io.make_past(2, 4))
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    return finish_openvino(model, io, stateful=stateful)


def finish_openvino(model, io: GraphIO, *, stateful: bool = True):
    """Name the ports, make batch/tokens/past dynamic and (with a cache) make the model stateful."""
    import openvino as ov

    for port, name in zip(model.inputs, io.input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, io.output_names):
        port.get_tensor().set_names({name})
    shapes = {io.input_names[0]: ov.PartialShape([-1, -1] if io.x_kind == "ids" else [-1, -1, io.hidden_size])}
    for name in io.past_names:
        shapes[name] = ov.PartialShape([-1, io.kv_heads, -1, io.head_dim])
    model.reshape(shapes)
    if stateful and io.n_layers_past:
        from openvino._offline_transformations import apply_make_stateful_transformation

        out_names = io.output_names[1:]
        apply_make_stateful_transformation(model, dict(zip(io.past_names, out_names)))
        _init_states_with_batch(model, io.input_names[0])
    return model


def _init_states_with_batch(model, x_name: str) -> None:
    """A fresh state must be [batch, kv, 0, head_dim]: without an initializer OpenVINO makes every
    dynamic dimension 0, batch included, and the first concat fails (optimum-intel does the same)."""
    import numpy as np
    from openvino import opset13 as ops

    batch = ops.gather(ops.shape_of(model.input(x_name), output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = [d.get_min_length() for d in op.get_output_partial_shape(0)]
        parts = [batch] + [ops.constant(np.array([d], dtype=np.int64)) for d in dims[1:]]
        op.set_arguments([ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)),
                                        ops.concat(parts, axis=0))])
    model.validate_nodes_and_infer_types()


def save_openvino(model, path: str | Path) -> Path:
    """Write an IR keeping fp32 (`ov.save_model` compresses to fp16 unless told not to)."""
    import openvino as ov

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    shutil.move(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    shutil.move(tmp, path)  # the .xml last: its presence means the pair is complete
    return path

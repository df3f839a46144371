"""A whole (sub-)network's ONNX graph in seconds: composed from per-block templates, not re-traced.

`torch.onnx.export(dynamo=True)` of a 30-layer model costs a minute or more, nearly all of it
tracing, and a sub-network differs from its base only in which layers it keeps and in the shapes of
its MLP weights. So each block kind (`embed`, decoder `layer`, `final` norm + LM head) is exported
once per architecture, from a copy of the block whose parameters are replaced by distinct random
values; matching the exported initializers against those values tells which parameter (as is, or
transposed) each initializer is. A template keeps the graph without its parameter data (a few
hundred KB) and is cached by the architecture's config (not by the model's weights), so two models
of one shape share it.

Composing a graph is then plumbing: the embed template, one renamed copy of the layer template per
kept layer (bound to `past_*_j` / `present_*_j`), the final template, and the sub-network's own
tensors filled in. Nothing in a template depends on the MLP width (shapes of intermediate values
are dropped and re-inferred by the runtime), so any widths compose from one template. Verified
against torch by the tests and by `hwnas export`'s own check; anything the template matching cannot
explain raises `ComposeError`, and callers fall back to a full export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TEMPLATE_VERSION = 1  # bump when the templates' modules or their matching change
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: above this, weights go to graph.onnx.data


class ComposeError(RuntimeError):
    """The templates could not reproduce this module (callers export it whole instead)."""


class EmbedBlock(nn.Module):
    def __init__(self, embed: nn.Module) -> None:
        super().__init__()
        self.embed = embed

    def forward(self, ids: torch.Tensor):
        return (self.embed(ids),)


class LayerBlock(nn.Module):
    """One decoder layer: `forward(h, past_k, past_v) -> (h, k, v)`."""

    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, h: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor):
        h, k, v = self.attn(h, past_k, past_v)
        (h,) = self.mlp(h)
        return h, k, v


class FinalBlock(nn.Module):
    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, h: torch.Tensor):
        return (self.lm_head(self.norm(h[:, -1:])),)


def _blocks(module: Any) -> dict[str, list[nn.Module]]:
    """The module (a CausalLMWithPast) cut into its blocks, in graph order."""
    return {"embed": [EmbedBlock(module.embed)],
            "layer": [LayerBlock(a, m) for a, m in zip(module.attn, module.mlp)],
            "final": [FinalBlock(module.norm, module.lm_head)]}


def _io_names(kind: str) -> tuple[list[str], list[str]]:
    return {"embed": (["input_ids"], ["hidden"]),
            "layer": (["hidden", "past_key", "past_value"], ["hidden_out", "present_key", "present_value"]),
            "final": (["hidden"], ["logits"])}[kind]


def _example(kind: str, io: Any) -> tuple[tuple[torch.Tensor, ...], tuple[Any, ...]]:
    from torch.export import Dim

    batch, seq, past = Dim("batch", min=1, max=64), Dim("seq", min=1, max=32768), Dim("past", min=0, max=32768)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 3, io.hidden_size, generator=g)
    if kind == "embed":
        return (torch.randint(0, io.vocab_size, (2, 3), generator=g),), ({0: batch, 1: seq},)
    if kind == "final":
        return (hidden,), ({0: batch, 1: seq},)
    kv = torch.randn(2, io.kv_heads, 4, io.head_dim, generator=g)
    return (hidden, kv, kv.clone()), ({0: batch, 1: seq}, {0: batch, 2: past}, {0: batch, 2: past})


def template_key(module: Any) -> str:
    """The architecture a template is valid for: the model's config minus what composition varies
    (depth, MLP width), plus the block classes and this file's template version."""
    cfg = module.config.to_dict()
    for k in ("num_hidden_layers", "intermediate_size", "intermediate_size_per_layer", "layer_types",
              "max_window_layers", "_name_or_path", "architectures", "torch_dtype", "dtype",
              "transformers_version", "auto_map"):
        cfg.pop(k, None)
    cfg["model_type"] = str(cfg.get("model_type", "")).removeprefix("hwnas_")  # a sliced twin: same blocks
    attn, mlp = module.attn[0], module.mlp[0]
    desc = {"config": cfg, "attn": type(attn.attn).__name__, "act": type(mlp.act).__name__,
            "bias": {n: p.shape[0] for n, p in attn.named_parameters() if n.endswith("bias")},
            "version": TEMPLATE_VERSION, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def template_dir(module: Any) -> Path:
    from hwnas.measure.graphs import graph_cache_root

    return graph_cache_root() / f"template-{template_key(module)}"


def _randomized(block: nn.Module, seed: int) -> nn.Module:
    """A deep copy of the block with every parameter replaced by distinct random values (so no two
    initializers coincide and each can be traced back to its parameter)."""
    twin = copy.deepcopy(block).float()  # templates are fp32 whatever the model's dtype (`as_fp32`)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)  # positive: norms stay well defined
    return twin


def _export_template(kind: str, block: nn.Module, io: Any, folder: Path) -> None:
    import onnx
    from onnx import numpy_helper

    twin = _randomized(block, seed=1 + ("embed", "layer", "final").index(kind)).eval()
    args, dyn = _example(kind, io)
    ins, outs = _io_names(kind)
    tmp = folder / f".{kind}.full.onnx"
    with torch.no_grad():
        torch.onnx.export(twin, args, str(tmp), dynamo=True, dynamic_shapes=dyn, input_names=ins,
                          output_names=outs, external_data=False, verbose=False, optimize=True)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    if proto.functions or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                              for n in proto.graph.node for a in n.attribute):
        raise ComposeError(f"the {kind} template has local functions or subgraphs")
    params = {n: p.detach().numpy() for n, p in twin.named_parameters()}
    by_sum = {}
    for n, a in params.items():
        by_sum.setdefault(round(float(a.astype(np.float64).sum()), 3), []).append(n)
    mapping: dict[str, list[str]] = {}
    kept = []
    for init in proto.graph.initializer:
        a = numpy_helper.to_array(init)
        hit = None
        if a.dtype == np.float32 and a.size > 1:
            for n in by_sum.get(round(float(a.astype(np.float64).sum()), 3), []):
                p = params[n]
                if a.shape == p.shape and np.array_equal(a, p):
                    hit = [n, "id"]
                elif a.ndim == 2 and a.shape == p.T.shape and np.array_equal(a, p.T):
                    hit = [n, "T"]
                if hit:
                    break
        if hit:
            mapping[init.name] = hit
        else:
            if a.dtype == np.float32 and a.size > 64:  # a large float constant no parameter explains
                raise ComposeError(f"{kind} template initializer {init.name} {list(a.shape)} matches no parameter")
            kept.append(init)
    missing = set(params) - {v[0] for v in mapping.values()}
    if missing:
        raise ComposeError(f"{kind} template does not use parameters {sorted(missing)} as initializers")
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    del proto.graph.value_info[:]  # shapes inside depend on the width; runtimes re-infer them
    onnx.save(proto, str(folder / f"{kind}.onnx"))
    (folder / f"{kind}.params.json").write_text(json.dumps(mapping, indent=1, sort_keys=True))


def ensure_templates(module: Any, io: Any) -> Path:
    """The template folder for this module's architecture, exported now if not cached."""
    folder = template_dir(module)
    if (folder / "done").is_file():
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # our own pid's leftover, never a user's folder
    tmp.mkdir(parents=True)
    blocks = _blocks(module)
    for kind in ("embed", "layer", "final"):
        _export_template(kind, blocks[kind][0], io, tmp)
    (tmp / "done").write_text(template_key(module) + "\n")
    try:
        tmp.rename(folder)
    except OSError:  # another process finished it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def compose_onnx(module: Any, io: Any, path: str | Path, *, external_data: bool | None = None) -> Path:
    """Write the ONNX graph of a CausalLMWithPast (a sub-network's layers and widths) at `path`
    from the cached templates: same inputs, outputs and numerics as `export_onnx` of the module.

    `external_data`: weights in `graph.onnx.data` beside it (streamed to disk, no protobuf copy:
    what measurement caches use); None: only above protobuf's limit (one self-contained file)."""
    import onnx

    folder = ensure_templates(module, io)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = _blocks(module)
    templates = {k: (onnx.load(str(folder / f"{k}.onnx")), json.loads((folder / f"{k}.params.json").read_text()))
                 for k in ("embed", "layer", "final")}
    states = {k: [dict(b.named_parameters()) for b in blocks[k]] for k in blocks}
    total = sum(st[p].numel() * 4 for k, (_, mapping) in templates.items() for st in states[k]
                for p, _ in mapping.values() if p in st)
    external = total > EXTERNAL_DATA_BYTES if external_data is None else external_data
    data_name = f"{path.name}.data"
    tmp = path.with_name(f".{path.name}.tmp")
    sink = open(tmp.with_name(f".{data_name}.tmp"), "wb") if external else None
    model = onnx.ModelProto()
    graph = model.graph
    graph.name = "hwnas_composed"
    opsets: dict[str, int] = {}
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    try:
        for kind, (tpl, mapping) in templates.items():
            model.ir_version = max(model.ir_version, tpl.ir_version)
            for op in tpl.opset_import:
                opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
            ins, outs = [i.name for i in tpl.graph.input], [o.name for o in tpl.graph.output]
            # constants shared by every copy of a template: written once, under the template's name
            consts = {c.name: f"{kind}/{c.name}" for c in tpl.graph.initializer}
            for c in tpl.graph.initializer:
                graph.initializer.append(c)
                graph.initializer[-1].name = consts[c.name]
            for j, state in enumerate(states[kind]):
                bind = _bindings(kind, j, len(blocks["layer"]))
                names = {**consts, **dict(zip(ins + outs, bind))}
                prefix = f"{kind}{j}/" if kind == "layer" else f"{kind}/"
                for init_name, (param, how) in mapping.items():
                    if param not in state:
                        raise ComposeError(f"{kind} block has no parameter {param}")
                    a = state[param].detach().float().numpy()
                    a = np.ascontiguousarray(a.T if how == "T" else a)
                    names[init_name] = f"{prefix}{param}" + (".T" if how == "T" else "")
                    _add_tensor(graph, names[init_name], a, sink, data_name)

                def rename(x: str, names: dict[str, str] = names, prefix: str = prefix) -> str:
                    return "" if not x else names.get(x) or f"{prefix}{x}"

                for node in tpl.graph.node:
                    graph.node.append(node)
                    n2 = graph.node[-1]
                    n2.name = prefix + node.name
                    n2.input[:] = [rename(x) for x in node.input]
                    n2.output[:] = [rename(x) for x in node.output]
                for vi, name in zip(tpl.graph.input, bind[: len(ins)]):
                    if name in io.input_names:
                        inputs[name] = _value_info(vi, name)
                for vi, name in zip(tpl.graph.output, bind[len(ins):]):
                    if name in io.output_names:
                        outputs[name] = _value_info(vi, name)
    finally:
        if sink is not None:
            sink.close()
    graph.input.extend(inputs[n] for n in io.input_names)
    graph.output.extend(outputs[n] for n in io.output_names)
    for d, v in sorted(opsets.items()):
        model.opset_import.add(domain=d, version=v)
    model.producer_name, model.producer_version = "hwnas", str(TEMPLATE_VERSION)
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    if external:  # the data first: graph.onnx's presence means the pair is complete
        shutil.move(tmp.with_name(f".{data_name}.tmp"), path.with_name(data_name))
    shutil.move(tmp, path)
    return path


def _add_tensor(graph: Any, name: str, a: np.ndarray, sink: Any, data_name: str) -> None:
    """One float32 initializer: its bytes inline, or appended to the open external-data file."""
    t = graph.initializer.add()
    t.name = name
    t.dims.extend(a.shape)
    t.data_type = 1  # FLOAT
    if sink is None:
        t.raw_data = a.tobytes()
        return
    pad = -sink.tell() % 64  # aligned, so the runtime can map it
    if pad:
        sink.write(b"\0" * pad)
    offset = sink.tell()
    sink.write(memoryview(a).cast("B"))
    t.data_location = 1  # EXTERNAL
    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(a.nbytes))):
        t.external_data.add(key=k, value=v)


def _bindings(kind: str, j: int, n_layers: int) -> list[str]:
    """The composed graph's names for one block copy's inputs then outputs (`h{j}`: the hidden
    state entering layer j)."""
    if kind == "embed":
        return ["input_ids", "h0"]
    if kind == "final":
        return [f"h{n_layers}", "logits"]
    return [f"h{j}", f"past_key_{j}", f"past_value_{j}", f"h{j + 1}", f"present_key_{j}", f"present_value_{j}"]


def _value_info(vi: Any, name: str) -> Any:
    v = copy.deepcopy(vi)
    v.name = name
    return v

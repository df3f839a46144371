"""ONNX and OpenVINO conversion of the core's graphs (`hwnas.measure.modules`: a whole network or an
operator block with an explicit KV cache, one calling convention `forward(x, *past) -> (y,
*present)`): `export_onnx` (dynamo, or composed from block templates for whole networks,
`onnx_compose`) and `convert_openvino` / `save_openvino` (stateful IR). The graph classes are
re-exported here for plugins written against this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from hwnas.measure.modules import (  # noqa: F401 - the graphs live in the core; re-exported for plugins
    KV_INPUT,
    KV_OUTPUT,
    AttentionBlock,
    CausalLMWithPast,
    GraphIO,
    HeadBlock,
    MLPBlock,
)


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
    module = as_fp32(module)
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


def as_fp32(module: nn.Module) -> nn.Module:
    """The module itself when it is fp32, else an fp32 copy: the graphs hwnas gives ONNX Runtime and
    OpenVINO are fp32 whatever dtype torch loaded the model in (a bf16 base's weights are exact in
    fp32). A whole model composed from templates is upcast tensor by tensor instead, with no copy."""
    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module
    import copy

    return copy.deepcopy(module).float()


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
    module = as_fp32(module)
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

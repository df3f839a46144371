"""ONNX Runtime backend: one dynamo-exported graph with past key values for prefill and decode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwnas.compression import PLAIN, Scheme, weight_plan
from hwnas.measure.backend import Backend, BackendConfig, dist_versions

# what `quantize_dynamic(weight_type=QInt8, per_channel=True)` stores: MatMul weights int8 symmetric
# per output column (range [-127, 127]), inputs quantized per tensor to uint8 at run time
# (DynamicQuantizeLinear); a Gather's table (the embedding) uint8 asymmetric per tensor
INT8 = Scheme("int8", bits=8, symmetric=True, group_size=None, activations="dynamic-u8",
              embed=Scheme("int8-table", bits=8, symmetric=False, group_size=0),
              description="quantize_dynamic: int8 weights per output channel, uint8 activations per tensor at run time")
# what `MatMulNBitsQuantizer(bits=4, block_size=32, is_symmetric=True, accuracy_level=4)` stores and
# runs: int4 weights in blocks of 32 along the input axis (MLAS's symmetric scale, full [-8, 7] range),
# inputs quantized to int8 per block of 32 before the integer product (accuracy_level 4, VNNI on x86);
# MatMulNBits takes no Gather, so a table in this format is stored as quantize_dynamic's uint8 table
INT4 = Scheme("int4", bits=4, symmetric=True, group_size=32, activations="block-s8", full_range=True,
              embed=INT8.embed,
              description="MatMulNBits: int4 weights in blocks of 32 (symmetric), int8 activations per block "
                          "(accuracy_level 4); an int4 embedding table is stored uint8 per tensor")
ACCURACY_LEVEL = 4


@dataclass
class OnnxRuntimeConfig(BackendConfig):
    provider: str = "CPUExecutionProvider"
    graph_optimization: str = "all"  # ORT GraphOptimizationLevel: disable | basic | extended | all


REQUIRES = ("onnxruntime", "onnx", "onnxscript")


def _write_onnx(ctx: Any) -> None:
    """`graph.onnx`: fp32, or the weight formats `ctx.compression` gives each block."""
    from hwnas.measure.graphs import build_module

    from .onnx_export import export_onnx

    module, io = build_module(ctx.model, "model")
    if ctx.compression is None:
        export_onnx(module, io, ctx.out / "graph.onnx")
        return
    tmp = ctx.out / ".fp32.onnx"
    export_onnx(module, io, tmp)
    quantize_onnx(tmp, ctx.out / "graph.onnx", ctx.compression)  # removes tmp and its data


class OnnxRuntimeBackend(Backend):
    NAME = "onnxruntime"
    CONFIG = OnnxRuntimeConfig
    CONVERTS = True
    WEIGHT_FORMATS = {"int8": INT8, "int4": INT4}
    FORMAT_ORDER = 10

    @classmethod
    def register_formats(cls, register: Any) -> None:
        register("onnx", "ONNX with past key values, one graph for prefill and decode (fp32, or a compressed "
                 "sub-network's per-block weight formats)", "fp32", _write_onnx, requires=REQUIRES, per_block=True)
        register("onnx-int8", "ONNX Runtime dynamic quantization (INT8 weights per channel, activations quantized "
                 "at run time), every block", "int8", _write_onnx, requires=REQUIRES, weights="int8", per_block=True)
        register("onnx-int4", "ONNX Runtime MatMulNBits (INT4 weights in blocks of 32, int8 activations per block; "
                 "the embedding table INT8), every block", "int4", _write_onnx, requires=REQUIRES, weights="int4",
                 per_block=True)

    @classmethod
    def has_artifacts(cls, workdir: Path, config: Any) -> bool:
        return (Path(workdir) / "graph.onnx").is_file()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        import importlib.util

        missing = [m for m in REQUIRES if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"missing {', '.join(missing)}: pip install 'hwnas[onnxruntime]'"
        return True, ""

    @classmethod
    def versions(cls) -> dict[str, str]:
        return dist_versions("onnxruntime", "onnx", "onnxscript", "torch")

    @classmethod
    def convert(cls, module: Any, io: Any, workdir: Path, config: Any) -> None:
        from .onnx_export import export_onnx

        path = Path(workdir) / "graph.onnx"
        if path.is_file():
            return
        plan = getattr(module, "weights", None)
        if plan is None:
            export_onnx(module, io, path, external_data=True)  # a measurement graph: fastest to write
            return
        tmp = path.with_name(".fp32.onnx")
        export_onnx(module, io, tmp, external_data=True)
        quantize_onnx(tmp, path, plan, external_data=True)

    def prepare(self, module: Any, io: Any, workdir: Path) -> None:
        import onnxruntime as ort

        self.io = io
        path = Path(workdir) / "graph.onnx"
        if module is not None:
            self.convert(module, io, workdir, self.config)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                 "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}[self.config.graph_optimization]
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        self.session = ort.InferenceSession(str(path), opts, providers=[self.config.provider])
        self._past: list[Any] = []
        self._out = None

    def load_past(self, past: list[Any]) -> None:
        self._past = [p.numpy() for p in past]

    def step(self, x: Any) -> None:
        feeds = dict(zip(self.io.input_names, [x.numpy(), *self._past]))
        out = self.session.run(None, feeds)
        self._out = out[0]
        if self.io.n_layers_past:
            self._past = out[1:]

    def outputs(self) -> Any:
        return self._out

    def save_cache(self) -> Any:
        return list(self._past)  # the runtime's output arrays: a step makes new ones

    def restore_cache(self, handle: Any) -> None:
        self._past = list(handle)


def quantize_onnx(src: Path, dst: Path, weights: Any, *, external_data: bool | None = None) -> dict[str, int]:
    """Write `src` (an fp32 graph) to `dst` with each weight in the format `weights` gives it (a
    Compression, or one format name for every weight): ONNX Runtime's `MatMulNBitsQuantizer` on
    exactly the MatMul nodes whose weight is to be int4, then its `quantize_dynamic` on exactly the
    MatMul / Gather nodes whose weight is to be int8 (and a Gather table of an int4 block, which
    MatMulNBits does not take: `INT4.embed`). Removes `src` (and its data). Returns how many nodes
    were quantized to each format and kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx_compose import EXTERNAL_DATA_BYTES

    src, dst = Path(src), Path(dst)
    plan = weight_plan(weights)
    graph = onnx.load(str(src), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    chosen: dict[str, list[str]] = {"int8": [], "int4": []}
    kept = 0
    for node in graph.node:
        weight = {"MatMul": 1, "Gather": 0}.get(node.op_type)
        if weight is None or len(node.input) <= weight or node.input[weight] not in inits:
            continue
        fmt = plan(node.input[weight])
        if fmt == PLAIN:
            kept += 1
        elif fmt == "int4" and node.op_type == "Gather":
            chosen["int8"].append(node.name)  # INT4.embed: the uint8 table
        elif fmt in chosen:
            chosen[fmt].append(node.name)
        else:
            raise ValueError(f"onnxruntime has no weight format {fmt!r}")
    size = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.name}.data"))
    external = size > EXTERNAL_DATA_BYTES if external_data is None else external_data

    def save(model: Any, path: Path, external: bool) -> None:
        onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                  location=f"{path.name}.data" if external else None)

    def remove(path: Path) -> None:
        path.unlink()
        path.with_name(f"{path.name}.data").unlink(missing_ok=True)

    if chosen["int4"]:
        MatMulNBitsQuantizer = _nbits_quantizer()
        model = onnx.load(str(src))
        # the quantizer takes every MatMul of its op types, `nodes_to_include` only adds to them: so
        # name what it must leave instead
        int4 = set(chosen["int4"])
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in int4]
        q = MatMulNBitsQuantizer(model, bits=INT4.bits, block_size=INT4.group_size, is_symmetric=INT4.symmetric,
                                 accuracy_level=ACCURACY_LEVEL, nodes_to_exclude=others)
        _quiet(q.process)
        target = dst if not chosen["int8"] else src.with_name(f".int4-{src.name}")
        save(q.model.model, target, external or bool(chosen["int8"]))
        remove(src)
        src = target
    if chosen["int8"]:
        _quiet(lambda: quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                                        nodes_to_quantize=chosen["int8"], use_external_data_format=external))
        remove(src)
    elif not chosen["int4"]:  # nothing to quantize: the fp32 graph is the answer
        save(onnx.load(str(src)), dst, external)
        remove(src)
    return {"int8": len(chosen["int8"]), "int4": len(chosen["int4"]), "fp32": kept}


def _nbits_quantizer() -> Any:
    """ORT's `MatMulNBitsQuantizer`, imported without the side effect of its module: it calls
    `logging.basicConfig(level=INFO)`, after which every library's INFO lines reach the user."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    return MatMulNBitsQuantizer


def _quiet(fn: Any) -> Any:
    """Run an ORT quantizer with its chatter silenced: MatMulNBits logs every node at INFO, and
    `quantize_dynamic` warns on the root logger to "run pre-processing" (shape inference for
    activation quantization, which dynamic weight quantization does not use) on every call."""
    import logging

    loggers = [logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer"), logging.getLogger()]
    levels = [log.level for log in loggers]
    loggers[0].setLevel(logging.WARNING)
    loggers[1].setLevel(logging.ERROR)
    try:
        return fn()
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)

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
    WEIGHT_FORMATS = {"int8": INT8}
    FORMAT_ORDER = 10

    @classmethod
    def register_formats(cls, register: Any) -> None:
        register("onnx", "ONNX with past key values, one graph for prefill and decode (fp32, or a compressed "
                 "sub-network's per-block weight formats)", "fp32", _write_onnx, requires=REQUIRES, per_block=True)
        register("onnx-int8", "ONNX Runtime dynamic quantization (INT8 weights per channel, activations quantized "
                 "at run time), every block", "int8", _write_onnx, requires=REQUIRES, weights="int8", per_block=True)

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


def quantize_onnx(src: Path, dst: Path, weights: Any, *, external_data: bool | None = None) -> dict[str, int]:
    """Write `src` (an fp32 graph) to `dst` with each weight in the format `weights` gives it (a
    Compression, or one format name for every weight): ONNX Runtime's `quantize_dynamic` on
    exactly the MatMul / Gather nodes whose weight is to be int8. Removes `src` (and its data).
    Returns how many nodes were quantized and kept fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx_compose import EXTERNAL_DATA_BYTES

    src, dst = Path(src), Path(dst)
    plan = weight_plan(weights)
    graph = onnx.load(str(src), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    chosen, kept = [], 0
    for node in graph.node:
        weight = {"MatMul": 1, "Gather": 0}.get(node.op_type)
        if weight is None or len(node.input) <= weight or node.input[weight] not in inits:
            continue
        fmt = plan(node.input[weight])
        if fmt == PLAIN:
            kept += 1
        elif fmt == "int8":
            chosen.append(node.name)
        else:
            raise ValueError(f"onnxruntime has no weight format {fmt!r}")
    size = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(f"{src.name}.data"))
    external = size > EXTERNAL_DATA_BYTES if external_data is None else external_data
    if chosen:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_quantize=chosen, use_external_data_format=external)
    else:  # nothing to quantize: the fp32 graph is the answer
        onnx.save(onnx.load(str(src)), str(dst), save_as_external_data=external,
                  location=f"{dst.name}.data" if external else None)
    src.unlink()
    src.with_name(f"{src.name}.data").unlink(missing_ok=True)
    return {"quantized": len(chosen), "fp32": kept}

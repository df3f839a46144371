"""ONNX Runtime backend: one dynamo-exported graph with past key values for prefill and decode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Backend, BackendConfig, dist_versions


@dataclass
class OnnxRuntimeConfig(BackendConfig):
    provider: str = "CPUExecutionProvider"
    graph_optimization: str = "all"  # ORT GraphOptimizationLevel: disable | basic | extended | all


class OnnxRuntimeBackend(Backend):
    NAME = "onnxruntime"
    CONFIG = OnnxRuntimeConfig
    CONVERTS = True

    @classmethod
    def has_artifacts(cls, workdir: Path, config: Any) -> bool:
        return (Path(workdir) / "graph.onnx").is_file()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        import importlib.util

        missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
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
        if not path.is_file():
            export_onnx(module, io, path, external_data=True)  # a measurement graph: fastest to write

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

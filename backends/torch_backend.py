"""torch eager backend: CPU, or CUDA (CUDA events for timing, `max_memory_allocated` for memory).
It runs the core's `hf` artifacts and declares `bnb-int8` (bitsandbytes INT8 weights, CUDA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwnas.measure.backend import Backend, BackendConfig, Measurement, dist_versions


@dataclass
class TorchConfig(BackendConfig):
    device: str = "cpu"  # or "cuda" / "cuda:N"


def _check_cuda(ctx: Any) -> None:
    import torch

    if not torch.cuda.is_available():
        from hwnas.export import ExportError

        raise ExportError("bnb-int8 needs a CUDA GPU: bitsandbytes INT8 on CPU is correct but measured 1.6-16x "
                          "slower than fp32 here, so hwnas refuses it; use onnx-int8 or openvino-int8 on CPU")


def _write_bnb(ctx: Any) -> None:
    import shutil

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tmp = ctx.out / ".fp32"
    ctx.model.save_pretrained(tmp)
    q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                             device_map="cuda")
    q.save_pretrained(ctx.out)
    shutil.rmtree(tmp)


class TorchBackend(Backend):
    NAME = "torch"
    CONFIG = TorchConfig
    FORMAT_ORDER = 40  # `hf` (the fp32 HF folder) is the core's own format

    @classmethod
    def register_formats(cls, register: Any) -> None:
        register("bnb-int8", "bitsandbytes LLM.int8() weights, CUDA only (HF folder + quantization_config)", "int8",
                 _write_bnb, requires=("bitsandbytes",), check=_check_cuda, backend_config={"device": "cuda"})

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""

    @classmethod
    def versions(cls) -> dict[str, str]:
        return dist_versions("torch", "transformers")

    def device(self) -> str:
        import torch

        if self.config.device.startswith("cuda"):
            return f"cuda:{torch.cuda.get_device_name(torch.device(self.config.device))}"
        return super().device()

    def prepare(self, module: Any, io: Any, workdir: Path) -> None:
        import torch

        if self.config.device.startswith("cuda") and not torch.cuda.is_available():
            from hwnas.errors import BackendError

            raise BackendError("torch backend: device cuda asked for but no CUDA GPU is visible")
        torch.set_num_threads(self.config.threads)
        self.dev = torch.device(self.config.device)
        self.module = module.to(self.dev).eval()
        # what the weights are in (`--dtype`): the cache and float inputs follow them
        self.dtype = next((p.dtype for p in module.parameters()), torch.float32)
        self.io = io
        self._past: list[Any] = []
        self._out = None

    def load_past(self, past: list[Any]) -> None:
        self._past = [p.to(self.dev, self.dtype) for p in past]

    def step(self, x: Any) -> None:
        import torch

        with torch.inference_mode():
            if x.device != self.dev:
                x = x.to(self.dev)
            if x.is_floating_point() and x.dtype != self.dtype:  # a block's hidden-state input
                x = x.to(self.dtype)
            out = self.module(x, *self._past)
        self._out = out[0]
        if self.io.n_layers_past:
            self._past = list(out[1:])

    def outputs(self) -> Any:
        return self._out.detach().float().cpu().numpy()

    def synchronize(self) -> None:
        if self.dev.type == "cuda":
            import torch

            torch.cuda.synchronize(self.dev)

    def timer(self):
        if self.dev.type != "cuda":
            return super().timer()
        import torch

        def run(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        return run

    def _measure(self, *args: Any, **kwargs: Any) -> Measurement:
        if self.dev.type != "cuda":
            return super()._measure(*args, **kwargs)
        import torch

        torch.cuda.reset_peak_memory_stats(self.dev)
        m = super()._measure(*args, **kwargs)
        m.peak_mem_mb = torch.cuda.max_memory_allocated(self.dev) / 2**20
        return m

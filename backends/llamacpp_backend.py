"""llama.cpp backend (through llama-cpp-python): a (sub-)network as one GGUF file, timed with
llama.cpp's own KV cache.

`convert` writes the graph's network as `model.gguf` (`hwnas.gguf_writer`: its own llama.cpp
architecture, or `deci` for per-layer MLP widths) in F32, or, for a compressed sub-network, each
block in its own GGUF tensor type quantized by ggml (`WEIGHT_FORMATS`: f16, q8_0, q5_0, q4_0 —
the types whose blocks of 32 fit any hidden size; the K-quants' blocks of 256 do not fit
SmolLM2's 576). Whole-file recipes (`hwnas export --format gguf-q4_k_m`) are export formats the plugin
declares (`register_formats`), with `gguf`, the searched per-block file. The shared timing loop drives
it like any runtime: `load_past` puts a cache of C tokens in place by truncating llama.cpp's cache
(it holds real keys and values of a fixed filler text, computed once, untimed), `step` decodes a
batch of tokens at the next positions. It measures whole networks only (no operator blocks): `hwnas profile` derives its lookup-table rows
from networks of two depths and every MLP width (`hwnas.profile`, "network differences").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwnas.compression import Scheme
from hwnas.measure.backend import Backend, BackendConfig, dist_versions

FILE = "model.gguf"
_LOAD_LOCK = threading.Lock()

_DOT = "ggml-q8_0"  # ggml's CPU matrix products quantize activations to Q8_0 for these weight types
WEIGHT_FORMATS = {
    "f16": Scheme("f16", bits=16, activations="fp16", ggml="f16",
                  description="GGUF F16 (activations rounded to half for the product)"),
    "q8_0": Scheme("q8_0", bits=8, group_size=32, activations=_DOT, ggml="q8_0",
                   description="GGUF Q8_0: 8-bit, one fp16 scale per 32 weights (ggml's quantizer)"),
    "q5_0": Scheme("q5_0", bits=5, group_size=32, activations=_DOT, ggml="q5_0",
                   description="GGUF Q5_0: 5-bit, one fp16 scale per 32 weights (ggml's quantizer)"),
    "q4_0": Scheme("q4_0", bits=4, group_size=32, activations=_DOT, ggml="q4_0",
                   description="GGUF Q4_0: 4-bit, one fp16 scale per 32 weights (ggml's quantizer)"),
}

@dataclass
class LlamaCppConfig(BackendConfig):
    n_ctx: int = 0  # context size (0: what the timed shapes need, at least 512)
    n_batch: int = 512
    # ggml's extra CPU buffer types (AMX tiles, repacked Q4_0/Q8_0 layouts): "on", "off", or "auto" =
    # off on CPUs with AMX, where ggml's AMX matrix product segfaults (llama.cpp issue #20824; measured
    # here on a Xeon VM with llama-cpp-python 0.3.36: Q8_0 and Q4_0 crash on the first decode)
    extra_buffers: str = "auto"


def _cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def open_llama(path: str | Path, *, extra_buffers: str = "auto", **kwargs: Any) -> Any:
    """`llama_cpp.Llama(path, **kwargs)` with ggml's extra buffer types on or off (see
    `LlamaCppConfig.extra_buffers`); llama-cpp-python has no argument for it, so its default model
    parameters are adjusted for the duration of the load."""
    import llama_cpp
    import llama_cpp.llama as module

    use = {"on": True, "off": False}.get(extra_buffers, not _cpu_has_amx())
    if use:
        return llama_cpp.Llama(str(path), **kwargs)
    with _LOAD_LOCK:  # the adjusted default is visible to other threads while it is in place
        default = module.llama_cpp.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        module.llama_cpp.llama_model_default_params = params
        try:
            return llama_cpp.Llama(str(path), **kwargs)
        finally:
            module.llama_cpp.llama_model_default_params = default



def _write_gguf(ctx: Any, ftype: str) -> None:
    """`model.gguf` in F32 / F16 (a compressed sub-network: its per-block tensor types, quantized by
    ggml), or a whole-file recipe (q8_0, q4_k_m) by llama.cpp's quantizer from an F32 file."""
    from hwnas import gguf_writer

    vocab = gguf_writer.vocab_fields(ctx.source, ctx.tokenizer, ctx.model.config.vocab_size)
    path = ctx.out / gguf_writer.FILE
    if ftype in ("f32", "f16"):
        ctx.options["gguf"] = gguf_writer.write_gguf(ctx.model, path, vocab, dtype=ftype, compression=ctx.compression)
        return
    tmp = ctx.out / ".f32.gguf"
    ctx.options["gguf"] = {**gguf_writer.write_gguf(ctx.model, tmp, vocab), "dtype": ftype}
    try:
        gguf_writer.quantize(tmp, path, ftype, threads=int(ctx.options.get("threads", 1)))
    finally:
        tmp.unlink(missing_ok=True)


def _check_gguf(ctx: Any) -> None:
    from hwnas import gguf_writer

    gguf_writer.arch_for(ctx.model)  # refuses a family / width mix llama.cpp has no architecture for


_DECI = "; per-layer MLP widths as llama.cpp's `deci` architecture"
# whole-file recipes by llama.cpp's quantizer: (format, ftype, description, precision)
_RECIPES = (
    ("gguf-f16", "f16", "GGUF for llama.cpp, F16 weights (norms F32)", "fp16"),
    ("gguf-q8_0", "q8_0", "GGUF for llama.cpp, Q8_0 (8-bit, one fp16 scale per 32 weights) by llama.cpp's quantizer",
     "int8-weights"),
    ("gguf-q4_k_m", "q4_k_m", "GGUF for llama.cpp, Q4_K_M (4-bit K-quants, some tensors Q6_K) by llama.cpp's "
     "quantizer", "int4-weights"))


class LlamaCppBackend(Backend):
    NAME = "llamacpp"
    CONFIG = LlamaCppConfig
    CONVERTS = True
    KINDS = ("model",)
    WEIGHT_FORMATS = WEIGHT_FORMATS
    FORMAT_ORDER = 30

    @classmethod
    def register_formats(cls, register: Any) -> None:
        requires = ("llama_cpp", "gguf")
        for name, ftype, desc, precision in _RECIPES:
            register(name, desc + _DECI, precision, lambda ctx, _t=ftype: _write_gguf(ctx, _t), requires=requires,
                     check=_check_gguf)
        register("gguf", "GGUF for llama.cpp: F32, or a compressed sub-network's per-block tensor types (f16, q8_0, "
                 "q5_0, q4_0) quantized by ggml, as the joint search on llamacpp searched them" + _DECI, "fp32",
                 lambda ctx: _write_gguf(ctx, "f32"), requires=requires, check=_check_gguf, per_block=True)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        import importlib.util

        missing = [m for m in ("llama_cpp", "gguf") if importlib.util.find_spec(m) is None]
        if missing:
            return False, (f"missing {', '.join(missing)}: pip install 'hwnas[llamacpp]' (llama-cpp-python "
                           "builds from source with cmake and a C++ compiler, ~5 min)")
        return True, ""

    @classmethod
    def versions(cls) -> dict[str, str]:
        return dist_versions("llama_cpp_python", "gguf", "torch")

    @classmethod
    def has_artifacts(cls, workdir: Path, config: Any) -> bool:
        return (Path(workdir) / FILE).is_file()

    @classmethod
    def convert(cls, module: Any, io: Any, workdir: Path, config: Any) -> None:
        from hwnas import gguf_writer

        path = Path(workdir) / FILE
        if path.is_file():
            return
        model = getattr(module, "network", None)
        if model is None:
            from hwnas.errors import BackendError

            raise BackendError("the llamacpp backend measures whole networks only (no operator blocks); "
                               "use `hwnas bench` / `hwnas baselines` with it, and profile with another backend")
        weights = getattr(module, "weights", None)
        if isinstance(weights, str):  # one format for every block
            from hwnas.compression import Compression

            weights = Compression.uniform(weights, len(model.model.layers))
        vocab = gguf_writer.vocab_fields(getattr(module, "source", None), getattr(module, "tokenizer", None),
                                         model.config.vocab_size)
        tmp = path.with_name(".tmp-" + FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        gguf_writer.write_gguf(model, tmp, vocab, compression=weights)
        tmp.replace(path)

    def prepare(self, module: Any, io: Any, workdir: Path) -> None:
        import numpy as np

        from hwnas.errors import BackendError

        if module is not None:
            self.convert(module, io, workdir, self.config)
        self.io = io
        self._n_ctx = self.config.n_ctx or 2048
        if self.config.extra_buffers not in ("auto", "on", "off"):
            raise BackendError(f"option extra_buffers={self.config.extra_buffers!r} must be auto, on or off")
        self.llm = open_llama(Path(workdir) / FILE, extra_buffers=self.config.extra_buffers, n_ctx=self._n_ctx,
                              n_batch=self.config.n_batch, n_ubatch=self.config.n_batch, n_threads=self.config.threads,
                              n_threads_batch=self.config.threads, logits_all=False, verbose=False)
        self._vocab = self.llm.n_vocab()
        self._filler = np.random.default_rng(0).integers(0, self._vocab, self._n_ctx).tolist()
        self._filled = 0  # tokens of the filler whose keys and values are in the cache
        self._error = BackendError

    def load_past(self, past: list[Any]) -> None:
        n = int(past[0].shape[-2]) if past else 0
        if n > self._filled:  # compute the filler's cache once (untimed), then truncate to each length
            self.llm.n_tokens = self._filled
            self.llm.eval(self._filler[self._filled:n])
            self._filled = n
        self.llm.n_tokens = n
        self._fresh = True

    def step(self, x: Any) -> None:
        if x.shape[0] != 1:
            raise self._error("the llamacpp backend times batch 1 only")
        ids = [int(t) for t in x[0].tolist()]
        if self.llm.n_tokens + len(ids) > self._n_ctx:
            raise self._error(f"context {self.llm.n_tokens + len(ids)} exceeds n_ctx {self._n_ctx}")
        start = self.llm.n_tokens
        self.llm.eval(ids)
        self._filled = min(self._filled, start)  # the filler's cache past `start` is overwritten

    def save_cache(self) -> Any:
        return self.llm.n_tokens  # llama.cpp overwrites the cache past n_tokens on the next eval

    def restore_cache(self, handle: Any) -> None:
        self.llm.n_tokens = handle
        self._filled = min(self._filled, handle)

    def outputs(self) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self._vocab,)).copy()[None]

    def close(self) -> None:
        self.llm.close()

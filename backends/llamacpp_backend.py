"""llama.cpp backend (through llama-cpp-python): a (sub-)network as one GGUF file, timed with
llama.cpp's own KV cache.

`convert` writes the graph's network as `model.gguf` (`hwnas.gguf_writer`: its own llama.cpp
architecture, or `deci` for per-layer MLP widths) in F32; quantized GGUF types are export
formats (`hwnas export --format gguf-q8_0`), measured from the artifact's own file. The shared timing loop drives
it like any runtime: `load_past` puts a cache of C tokens in place by truncating llama.cpp's cache
(it holds real keys and values of a fixed filler text, computed once, untimed), `step` decodes a
batch of tokens at the next positions. It measures whole networks only (no operator blocks yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Backend, BackendConfig, dist_versions

FILE = "model.gguf"

@dataclass
class LlamaCppConfig(BackendConfig):
    n_ctx: int = 0  # context size (0: what the timed shapes need, at least 512)
    n_batch: int = 512


class LlamaCppBackend(Backend):
    NAME = "llamacpp"
    CONFIG = LlamaCppConfig
    CONVERTS = True
    KINDS = ("model",)

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

    def device(self) -> str:
        from hwnas.fingerprint import _cpu_model

        return f"cpu:{_cpu_model()}"

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
        if getattr(module, "weights", None) is not None:
            from hwnas.errors import BackendError

            raise BackendError("llamacpp measures fp32 networks here; GGUF types are export formats "
                               "(hwnas export --format gguf-q8_0 ...), measured from the artifact")
        vocab = gguf_writer.vocab_fields(getattr(module, "source", None), getattr(module, "tokenizer", None),
                                         model.config.vocab_size)
        gguf_writer.write_gguf(model, path, vocab)

    def prepare(self, module: Any, io: Any, workdir: Path) -> None:
        import llama_cpp
        import numpy as np

        from hwnas.errors import BackendError

        if module is not None:
            self.convert(module, io, workdir, self.config)
        self.io = io
        self._n_ctx = self.config.n_ctx or 2048
        self.llm = llama_cpp.Llama(str(Path(workdir) / FILE), n_ctx=self._n_ctx, n_batch=self.config.n_batch,
                                   n_ubatch=self.config.n_batch, n_threads=self.config.threads,
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

    def outputs(self) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self._vocab,)).copy()[None]

    def close(self) -> None:
        self.llm.close()

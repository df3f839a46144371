"""An exported artifact as something the `Evaluator` scores: its own runtime computes every logit.

`hwnas eval --model ARTIFACT_DIR` scores what ships, not the torch model it came from: the same
tasks, the same lm-eval request encoding and metrics (`scoring.encode_requests`, the evaluator's
summaries), but every log-likelihood comes from the artifact's runtime (ONNX Runtime, OpenVINO,
llama.cpp, ...) through its KV cache, as generation runs it. A deployed graph returns the logits of
its last position only, so a continuation is scored one token per step: the context as one prefill
(its last logits predict the first continuation token), then each continuation token but the last
as a decode step. The choices of one item share their context: where the runtime can keep a cache
(`Backend.save_cache`), the context is prefilled once per item and the cache put back for each
choice. Perplexity windows are fed token by token from the first token (`export.stream_logits`):
every position after the first is scored, as the torch `perplexity` scores a window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .perplexity import PerplexityResult
from .scoring import LogLikelihood, TokRequest


class ArtifactModel:
    """An exported artifact folder opened in its runtime (`hwnas.export.open_runtime`)."""

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        from ..export import open_runtime, read_manifest

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.backend, self.io = open_runtime(self.folder, self.manifest, threads=threads)
        self.steps = 0  # runtime calls, for the cost report

    @property
    def format(self) -> str:
        return self.manifest["format"]

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.folder)

    def _step(self, ids: Sequence[int]) -> np.ndarray:
        import torch

        from ..export import _last_logits, _log_softmax

        self.backend.step(torch.as_tensor([list(ids)], dtype=torch.long))
        self.steps += 1
        return _log_softmax(_last_logits(self.backend, self.io.vocab_size).astype(np.float64))

    def _continue(self, first: np.ndarray, continuation: Sequence[int]) -> LogLikelihood:
        """Score `continuation` given the log-probabilities `first` of its first token."""
        ll, greedy, lp = 0.0, True, first
        for i, tok in enumerate(continuation):
            ll += float(lp[tok])
            greedy = greedy and int(lp.argmax()) == tok
            if i + 1 < len(continuation):
                lp = self._step([tok])
        return LogLikelihood(ll, greedy, len(continuation))

    def score_item(self, requests: Sequence[TokRequest]) -> list[LogLikelihood]:
        """Log-likelihoods of one item's requests (usually its choices after one shared context)."""
        out: list[LogLikelihood] = []
        cached: tuple[tuple[int, ...], Any, np.ndarray] | None = None
        for r in requests:
            if cached is not None and cached[0] == r.context:
                self.backend.restore_cache(cached[1])
                first = cached[2]
            else:
                self.backend.load_past(self.io.make_past(1, 0))
                first = self._step(r.context)
                handle = self.backend.save_cache()
                cached = (r.context, handle, first) if handle is not None else None
            out.append(self._continue(first, r.continuation))
        return out

    def window_nll(self, w: np.ndarray, lo: int = 0) -> tuple[float, int]:
        """Summed negative log-likelihood of the tokens of window `w` after position `lo`, fed from
        its first token one at a time through the cache (`export.stream_logits`), and their count."""
        from ..export import _log_softmax, stream_logits

        lp = _log_softmax(stream_logits(self.backend, self.io, w).astype(np.float64))
        self.steps += len(w) - 1
        return -float(lp[np.arange(lo, len(w) - 1), w[lo + 1:]].sum()), len(w) - 1 - lo

    def perplexity(self, ids: Any, *, window: int, stride: int, max_windows: int | None) -> PerplexityResult:
        """`evaluate.perplexity`'s windows and scored positions, through the runtime token by token."""
        t0 = time.perf_counter()
        ids = np.asarray(ids).reshape(-1)
        window = min(window, len(ids))
        stride = min(stride or window, window)
        starts = list(range(0, max(1, len(ids) - window + 1), stride))[: max_windows or None]
        nll, count = 0.0, 0
        for s in starts:
            a, n = self.window_nll(ids[s: s + window], max(window - stride - 1, 0) if s else 0)
            nll, count = nll + a, count + n
        return PerplexityResult(ppl=math.exp(nll / count), tokens=count, windows=len(starts), window=window,
                                stride=stride, seconds=time.perf_counter() - t0)

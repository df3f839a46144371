"""Perplexity over fixed windows of a text (WikiText-2 by default), as the LLaMA papers report it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import find_data_file

WIKITEXT2 = "wikitext2/wiki.test.raw"
HEAD_CHUNK = 256  # positions per LM-head matmul


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    tokens: int  # tokens scored
    windows: int
    window: int
    stride: int
    seconds: float

    def to_dict(self) -> dict[str, float | int]:
        return {"ppl": self.ppl, "tokens": self.tokens, "windows": self.windows,
                "window": self.window, "stride": self.stride, "seconds": round(self.seconds, 3)}


def load_text(path: str | Path | None = None, data_dir: str | Path | None = None) -> str:
    path = Path(path) if path else find_data_file(WIKITEXT2, data_dir)
    return path.read_text(encoding="utf-8")


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, *, window: int = 1024, stride: int | None = None,
               max_windows: int | None = 8, batch_size: int = 1) -> PerplexityResult:
    """Sliding-window perplexity. With stride == window (default) windows do not overlap; with a
    smaller stride each window scores only its last `stride` tokens, conditioned on the rest."""
    window = min(window, ids.numel())  # a short text is one window
    if window < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    stride = min(stride or window, window)
    start_t = time.perf_counter()
    starts = list(range(0, max(1, ids.numel() - window + 1), stride))
    if max_windows is not None:
        starts = starts[:max_windows]
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    nll, count = 0.0, 0
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        batch = torch.stack([ids[s : s + window] for s in chunk])
        hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state
        first = window - stride - 1  # position predicting the first token the last window did not score
        for row, s in enumerate(chunk):
            lo = max(first, 0) if s else 0  # the first window scores all its tokens
            # The LM head only where a token is scored, a slice at a time (vocab x positions is big).
            for a in range(lo, window - 1, HEAD_CHUNK):
                z = min(a + HEAD_CHUNK, window - 1)
                logits = head(hidden[row, a:z]).float()
                nll += F.cross_entropy(logits, batch[row, a + 1 : z + 1], reduction="sum").item()
            count += window - 1 - lo
    return PerplexityResult(ppl=math.exp(nll / count), tokens=count, windows=len(starts), window=window,
                            stride=stride, seconds=time.perf_counter() - start_t)

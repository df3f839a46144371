"""Log-likelihood of continuations, computed with the fewest token positions a causal LM allows.

A request is (context, continuation) tokenized exactly as lm-eval's `_encode_pair` does. All
requests of a task share a prefix (TruthfulQA's 6-shot primer, MMLU's subject line) whose KV cache is
computed once per model. The rest of each item is a token trie: a shared context appears once and
every choice hangs off it. Many items' tries are packed into one sequence whose 4-D attention mask
lets a token see only its ancestors (with the positions it would have alone), so one forward scores
dozens of items with no padding and no repeated context. The LM head runs only at the positions
that predict a continuation token. The result is the same as one forward per (context, choice)
up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

MIN_SHARED_PREFIX = 8  # below this a task-wide KV cache is not worth keeping


@dataclass(frozen=True)
class TokRequest:
    """One log-likelihood query in token ids: score `continuation` after `context`."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class LogLikelihood:
    """Sum of log p(continuation tokens) and whether greedy decoding would produce them all."""

    ll: float
    greedy: bool
    tokens: int


def encode_requests(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[TokRequest]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation; the
    context and context+continuation are encoded and the continuation is the tail of the latter
    past len(context tokens). An empty context becomes the BOS (else EOS) token."""
    fixed: list[tuple[str, str]] = []
    for ctx, cont in pairs:
        n_spaces = len(ctx) - len(ctx.rstrip())
        if n_spaces:
            ctx, cont = ctx[:-n_spaces], ctx[-n_spaces:] + cont
        fixed.append((ctx, cont))
    texts = sorted({t for ctx, cont in fixed for t in ((ctx, ctx + cont) if ctx else (cont,))})
    ids = dict(zip(texts, tokenizer(texts)["input_ids"])) if texts else {}
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for ctx, cont in fixed:
        if not ctx:
            out.append(TokRequest((prefix,), tuple(ids[cont])))
            continue
        c = ids[ctx]
        out.append(TokRequest(tuple(c), tuple(ids[ctx + cont][len(c):])))
    return out


def shared_prefix_length(requests: Sequence[TokRequest]) -> int:
    """How many leading tokens every request's input shares, keeping each request's last
    context token out (its output predicts the first continuation token)."""
    if not requests:
        return 0
    first = requests[0].context + requests[0].continuation
    n = min(len(r.context) - 1 for r in requests)
    for r in requests:
        seq = r.context + r.continuation
        k = 0
        while k < n and seq[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return n if n >= MIN_SHARED_PREFIX else 0


@dataclass
class _Pack:
    tokens: list[int]
    parent: list[int]
    depth: list[int]
    positions: list[int]  # input positions whose output predicts a continuation token
    targets: list[int]
    spans: list[tuple[int, int, int]]  # (item, request, number of positions)


class Scorer:
    """Scores tokenized items (each a list of requests) on a model; built once per task."""

    def __init__(self, items: Sequence[Sequence[TokRequest]], pack_tokens: int = 512) -> None:
        self.items = [list(it) for it in items]
        flat = [r for it in self.items for r in it]
        self.prefix_len = shared_prefix_length(flat)
        self.prefix = flat[0].context[: self.prefix_len] if flat else ()
        self.pack_tokens = pack_tokens
        self.packs = self._build_packs()

    def _build_packs(self) -> list[_Pack]:
        s = self.prefix_len
        seqs = [[(r.context + r.continuation)[s:-1] for r in it] for it in self.items]
        # Similar items next to each other share more trie nodes inside a pack.
        order = sorted(range(len(self.items)), key=lambda i: seqs[i][0] if seqs[i] else ())
        packs: list[_Pack] = []
        pack: _Pack | None = None
        nodes: dict[tuple[int, int], int] = {}
        for i in order:
            need = len({tuple(q[:k + 1]) for q in seqs[i] for k in range(len(q))})
            if pack is None or (pack.tokens and len(pack.tokens) + need > self.pack_tokens):
                pack, nodes = _Pack([], [], [], [], [], []), {}
                packs.append(pack)
            for j, (req, seq) in enumerate(zip(self.items[i], seqs[i])):
                path, parent = [], -1
                for d, tok in enumerate(seq):
                    key = (parent, tok)
                    if key not in nodes:
                        nodes[key] = len(pack.tokens)
                        pack.tokens.append(tok)
                        pack.parent.append(parent)
                        pack.depth.append(s + d)
                    parent = nodes[key]
                    path.append(parent)
                first = len(req.context) - 1 - s
                n = len(req.continuation)
                pack.positions.extend(path[first : first + n])
                pack.targets.extend(req.continuation)
                pack.spans.append((i, j, n))
        return packs

    @torch.no_grad()
    def run(self, model) -> list[list[LogLikelihood]]:  # any transformers causal LM
        """Log-likelihood of every request of every item, in input order."""
        from transformers import DynamicCache

        decoder, head = model.get_decoder(), model.get_output_embeddings()
        dtype = next(model.parameters()).dtype
        s = self.prefix_len
        prefix_kv = None
        if s:  # the task-wide prefix, encoded once; every pack starts from a fresh copy of its cache
            cache = DynamicCache(config=model.config)
            decoder(input_ids=torch.tensor([self.prefix]), past_key_values=cache, use_cache=True)
            prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        out: list[list[LogLikelihood | None]] = [[None] * len(it) for it in self.items]
        for pack in self.packs:
            t = len(pack.tokens)
            anc = np.zeros((t, t), dtype=bool)
            for k, p in enumerate(pack.parent):
                if p >= 0:
                    anc[k, :p + 1] = anc[p, :p + 1]
                anc[k, k] = True
            mask = torch.zeros((1, 1, t, s + t), dtype=dtype)
            mask[0, 0, :, s:].masked_fill_(torch.from_numpy(~anc), torch.finfo(dtype).min)
            cache = DynamicCache(prefix_kv, config=model.config) if prefix_kv else None
            hidden = decoder(input_ids=torch.tensor([pack.tokens]),
                             position_ids=torch.tensor([pack.depth]), attention_mask=mask,
                             past_key_values=cache, use_cache=cache is not None).last_hidden_state[0]
            if not pack.positions:
                lls = torch.zeros(0)
                greedy = torch.zeros(0, dtype=torch.bool)
            else:
                logits = head(hidden[pack.positions]).float()
                target = torch.tensor(pack.targets)
                lls = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
                greedy = logits.argmax(dim=-1) == target
            at = 0
            for i, j, n in pack.spans:
                out[i][j] = LogLikelihood(float(lls[at : at + n].double().sum()),
                                          bool(greedy[at : at + n].all()), n)
                at += n
        return out  # type: ignore[return-value]


@torch.no_grad()
def naive_loglikelihoods(model, requests: Sequence[TokRequest]) -> list[LogLikelihood]:
    """The reference: one full forward (full LM head) per request, as a plain loop would do it."""
    out = []
    for r in requests:
        ids = torch.tensor([r.context + r.continuation])
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits[0, len(r.context) - 1 :].float()
        target = torch.tensor(r.continuation)
        lls = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
        out.append(LogLikelihood(float(lls.double().sum()), bool((logits.argmax(-1) == target).all()),
                                 len(target)))
    return out

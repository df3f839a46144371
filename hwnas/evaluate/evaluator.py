"""Prepare tasks once (read, subsample, tokenize, pack), then evaluate many models in memory."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import find_data_file
from ..errors import DataNotFoundError
from .perplexity import load_text, perplexity, tokenize_text
from .scoring import LogLikelihood, Scorer, encode_requests
from .tasks import DEFAULT_TASKS, Doc, TaskError, TaskSpec, parse_tasks, subsample

RESULT_VERSION = 1
# what `TaskResult.to_dict` says about how a task was scored (its settings, time and chosen metric),
# not a score: a search record keeps every other field (`TaskResult.scores`)
NOT_SCORES = ("metric", "seconds", "window", "stride")


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome, kept so two evaluations can be compared choice by choice."""

    index: int  # row in the task's file
    gold: int
    pred: int  # argmax of log-likelihoods (for last_word tasks: 1 if greedy-correct else 0)
    pred_norm: int | None  # argmax of log-likelihood / len(choice) (None where acc_norm is not defined)
    lls: tuple[float, ...]


@dataclass(frozen=True)
class TaskResult:
    """A task's scores. `metric` names the one an objective uses; `value` returns it."""

    task: str
    metric: str
    higher_is_better: bool
    n: int  # items (or perplexity windows)
    seconds: float
    acc: float | None = None
    acc_norm: float | None = None
    stderr: float | None = None  # of acc (lm-eval: sample std / sqrt(n))
    stderr_norm: float | None = None
    ppl: float | None = None
    tokens: int | None = None
    window: int | None = None
    stride: int | None = None
    items: tuple[ItemResult, ...] = ()

    @property
    def value(self) -> float:
        return float(getattr(self, self.metric))

    def to_dict(self) -> dict[str, Any]:
        if self.window is not None:  # perplexity
            return {"ppl": self.ppl, "tokens": self.tokens, "window": self.window, "stride": self.stride,
                    "windows": self.n, "metric": self.metric, "seconds": round(self.seconds, 3)}
        out: dict[str, Any] = {"acc": self.acc, "acc_norm": self.acc_norm, "stderr": self.stderr,
                               "stderr_norm": self.stderr_norm, "n": self.n}
        if self.ppl is not None:
            out["ppl"] = self.ppl
        out.update(metric=self.metric, seconds=round(self.seconds, 3))
        return out

    def scores(self) -> dict[str, Any]:
        """Every score of `to_dict` the task has (None left out): what a search record keeps."""
        return {k: v for k, v in self.to_dict().items() if v is not None and k not in NOT_SCORES}


@dataclass(frozen=True)
class EvalResult:
    """Every task's result for one model."""

    tasks: dict[str, TaskResult]
    seconds: float
    limit: int | None = None
    seed: int = 0

    def objective(self, task: str) -> float:
        """The value of the task's declared metric (acc, acc_norm or ppl)."""
        return self.tasks[task].value

    def agreement(self, other: EvalResult) -> dict[str, float]:
        """Per task, the fraction of items where both results chose the same answer (acc's argmax;
        LAMBADA: the same greedy verdict); only tasks and items present in both count."""
        out = {}
        for name, mine in self.tasks.items():
            theirs = other.tasks.get(name)
            if theirs is None or not mine.items:
                continue
            by_index = {i.index: i.pred for i in theirs.items}
            same = [i.pred == by_index[i.index] for i in mine.items if i.index in by_index]
            if same:
                out[name] = sum(same) / len(same)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"version": RESULT_VERSION, "tasks": {k: v.to_dict() for k, v in self.tasks.items()},
                "limit": self.limit, "seed": self.seed, "seconds": round(self.seconds, 3)}


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's stderr of a mean: sample standard deviation / sqrt(n)."""
    n = len(values)
    if n < 2:
        return float("nan")
    return float(np.std(np.asarray(values, dtype=float), ddof=1) / math.sqrt(n))


@dataclass
class PreparedTask:
    """A task read, subsampled and tokenized for one tokenizer."""

    spec: TaskSpec
    docs: list[Doc] = field(default_factory=list)
    scorer: Scorer | None = None
    ids: Any = None  # perplexity tasks: the token ids of the text


class Evaluator:
    """Build once per tokenizer and task set; `evaluate(model)` then costs only forwards."""

    def __init__(self, tokenizer, tasks: str | Sequence[str] = DEFAULT_TASKS, *,
                 limit: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                 ppl_windows: int | None = 8, ppl_window: int | None = None, ppl_stride: int | None = None,
                 pack_tokens: int = 384) -> None:
        self.limit, self.seed, self.ppl_windows = limit, seed, ppl_windows
        self.ppl_window, self.ppl_stride = ppl_window, ppl_stride
        self.tasks: dict[str, PreparedTask] = {}
        for spec in parse_tasks(tasks):
            self.tasks[spec.name] = self._prepare(spec, tokenizer, data_dir, pack_tokens)

    def _prepare(self, spec: TaskSpec, tokenizer, data_dir, pack_tokens: int) -> PreparedTask:
        if spec.kind == "perplexity":
            path = Path(spec.file)
            if not path.is_absolute():
                path = find_data_file(spec.file, data_dir)
            elif not path.is_file():
                raise DataNotFoundError(f"task {spec.name}: text file '{path}' not found")
            ids = tokenize_text(tokenizer, load_text(path))
            if ids.numel() < 2:
                raise TaskError(f"task {spec.name}: '{path}' has fewer than 2 tokens")
            return PreparedTask(spec, ids=ids)
        docs = subsample(spec.load_docs(data_dir), self.limit, self.seed)
        pairs = [(c, x) for d in docs for c, x in zip(d.contexts, d.continuations)]
        flat = encode_requests(tokenizer, pairs)
        items, at = [], 0
        for d in docs:
            items.append(flat[at : at + len(d.contexts)])
            at += len(d.contexts)
        return PreparedTask(spec, docs, Scorer(items, pack_tokens=pack_tokens))

    def evaluate(self, model, tasks: Sequence[str] | None = None) -> EvalResult:
        """Score `model` on every prepared task, or on the prepared `tasks` named: any transformers
        causal LM in memory (a base model or a materialized sub-network), or an exported artifact
        opened in its runtime (`evaluate.artifact.ArtifactModel`)."""
        names = list(self.tasks) if tasks is None else list(tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise TaskError(f"tasks {unknown} were not prepared; this evaluator has {list(self.tasks)}")
        t0 = time.perf_counter()
        in_memory = not _is_artifact(model)
        was_training = model.training if in_memory else False
        if in_memory:
            model.eval()
        try:
            results = {name: self._run(self.tasks[name], model) for name in names}
        finally:
            if in_memory:
                model.train(was_training)
        return EvalResult(results, time.perf_counter() - t0, self.limit, self.seed)

    def _run(self, task: PreparedTask, model) -> TaskResult:
        spec = task.spec
        t0 = time.perf_counter()
        artifact = _is_artifact(model)
        if spec.kind == "perplexity":
            window = self.ppl_window or spec.window
            stride = self.ppl_stride or min(spec.stride, window)
            if artifact:
                r = model.perplexity(task.ids, window=window, stride=stride, max_windows=self.ppl_windows)
            else:
                r = perplexity(model, task.ids, window=window, stride=stride, max_windows=self.ppl_windows)
            return TaskResult(spec.name, spec.metric, spec.higher_is_better, r.windows,
                              time.perf_counter() - t0, ppl=r.ppl, tokens=r.tokens, window=r.window,
                              stride=r.stride)
        assert task.scorer is not None
        scored = [model.score_item(it) for it in task.scorer.items] if artifact else task.scorer.run(model)
        return _summarize(spec, task.docs, scored, time.perf_counter() - t0)


def _is_artifact(model) -> bool:
    """An exported artifact in its runtime (`evaluate.artifact.ArtifactModel`), not a torch model."""
    return hasattr(model, "score_item")


def _summarize(spec: TaskSpec, docs: list[Doc], scored: list[list[LogLikelihood]], seconds: float) -> TaskResult:
    items: list[ItemResult] = []
    hits, hits_norm = [], []
    if spec.kind == "last_word":
        lls = [s[0].ll for s in scored]
        for d, s in zip(docs, scored):
            items.append(ItemResult(d.index, 0, 0 if s[0].greedy else 1, None, (s[0].ll,)))
            hits.append(float(s[0].greedy))
        return TaskResult(spec.name, spec.metric, spec.higher_is_better, len(docs), seconds,
                          acc=float(np.mean(hits)), stderr=mean_stderr(hits),
                          ppl=math.exp(-float(np.mean(lls))), items=tuple(items))
    use_norm = "acc_norm" in spec.metrics
    for d, s in zip(docs, scored):
        lls = np.array([x.ll for x in s])
        pred = int(np.argmax(lls))
        pred_norm = None
        if use_norm:
            pred_norm = int(np.argmax(lls / np.array([float(len(c)) for c in d.norm_texts])))
            hits_norm.append(float(pred_norm == d.gold))
        hits.append(float(pred == d.gold))
        items.append(ItemResult(d.index, d.gold, pred, pred_norm, tuple(float(x) for x in lls)))
    return TaskResult(spec.name, spec.metric, spec.higher_is_better, len(docs), seconds,
                      acc=float(np.mean(hits)), stderr=mean_stderr(hits),
                      acc_norm=float(np.mean(hits_norm)) if use_norm else None,
                      stderr_norm=mean_stderr(hits_norm) if use_norm else None, items=tuple(items))

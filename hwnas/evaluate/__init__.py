"""Accuracy objectives: perplexity and lm-eval-style multiple-choice tasks."""

from .evaluator import EvalResult, Evaluator, ItemResult, TaskResult
from .tasks import DEFAULT_TASKS, TASKS, TaskSpec, get_task

__all__ = ["DEFAULT_TASKS", "TASKS", "EvalResult", "Evaluator", "ItemResult", "TaskResult", "TaskSpec",
           "get_task"]

"""LINAS search: real-evaluation rounds that train predictors, predictor-driven NSGA-II between them.

Round 0 evaluates random sub-networks for real. Each later round fits the accuracy predictor(s) on
everything evaluated so far, runs pymoo's NSGA-II on *predicted* objectives for thousands of
evaluations, and evaluates the final population for real - skipping sub-networks already evaluated.
The base model stays in memory for the whole run. Every real evaluation is appended to
`evaluations.jsonl` (named fields, `docs/formats.md`), so a killed search resumes losing at most the
evaluation in flight.

One module per job:

- `config`: the run config (`RunConfig`, `Objective`, `LinasConfig`) and the metric names;
- `encoding`: integer genes of a space (`Encoding`);
- `store`: the results store (`ResultsStore`), one record of it (`EvalRecord`) and reading a record's
  metric (`metric_value`);
- `front`: budgets, the Pareto front (`front_indices`, the one the search and reports share) and
  hypervolume;
- `cost`: exact parameter counts and weight sizes (`CostModel`);
- `problem`: the inner search's pymoo problem on predicted objectives (`PredictedProblem`);
- `algorithms`: linas, nsga2 and random by name (`ALGORITHMS`), and the NSGA-II they use (`nsga2`);
- `runner`: one search run (`Search`, `SearchResult`).

pymoo (the `search` extra) is imported only when a search runs: `PredictedProblem` and
`predicted_values` load `problem` on first access.
"""

from __future__ import annotations

from typing import Any

from .algorithms import ALGORITHMS, nsga2
from .config import (
    CHANNEL_ORDERS,
    COST_METRICS,
    LATENCY_METRICS,
    LinasConfig,
    Objective,
    RunConfig,
    latency_target,
)
from .cost import CostModel
from .encoding import Encoding
from .front import budget_slack, feasible, front_indices, hypervolume, objective_matrix, pareto_mask
from .runner import ProgressFn, Search, SearchResult
from .store import STORE_FILE, STORE_VERSION, EvalRecord, ResultsStore, metric_value, record_values


def __getattr__(name: str) -> Any:
    """`PredictedProblem` and `predicted_values` subclass / use pymoo: loaded on first access."""
    if name in ("PredictedProblem", "predicted_values"):
        from . import problem

        return getattr(problem, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALGORITHMS", "CHANNEL_ORDERS", "COST_METRICS", "LATENCY_METRICS", "STORE_FILE", "STORE_VERSION",
           "CostModel", "Encoding", "EvalRecord", "LinasConfig", "Objective", "PredictedProblem", "ProgressFn", "ResultsStore",
           "RunConfig", "Search", "SearchResult", "budget_slack", "feasible", "front_indices", "hypervolume",
           "latency_target", "metric_value", "nsga2", "objective_matrix", "pareto_mask", "predicted_values",
           "record_values"]

"""Which evaluated sub-networks are a run's Pareto front, and how much of the objective space it covers.

`front_indices` is the one definition of the front: the records meeting every budget of the run,
then non-dominated in its objectives. The search writes it to `front.json` and reports list and
plot the same points (`front.md`, `--measure-front`). A budget is an upper bound for a metric
minimised (or not an objective), a lower bound for one maximised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .config import Objective
from .store import metric_value, record_values


def objective_matrix(records: list[dict[str, Any]], objectives: Sequence[Objective]) -> np.ndarray:
    """(records, objectives) minimisation matrix: each objective's value, negated where maximised."""
    return np.asarray([[o.sign * metric_value(r, o.metric) for o in objectives] for r in records],
                      dtype=float).reshape(len(records), len(objectives))


def budget_slack(values: Mapping[str, np.ndarray], objectives: Sequence[Objective],
                 budgets: Mapping[str, float]) -> np.ndarray:
    """(n, budgets) pymoo-style constraint values of metric values: <= 0 where a budget is met."""
    cols = []
    for metric, bound in budgets.items():
        goal = next((o.goal for o in objectives if o.metric == metric), "min")
        vals = np.asarray(values[metric], dtype=float)
        cols.append(vals - bound if goal == "min" else bound - vals)
    return np.stack(cols, 1)


def feasible(records: list[dict[str, Any]], objectives: Sequence[Objective],
             budgets: Mapping[str, float]) -> np.ndarray:
    """Booleans: which records meet every budget."""
    if not budgets:
        return np.ones(len(records), dtype=bool)
    return (budget_slack(record_values(records, budgets), objectives, budgets) <= 0).all(1)


def front_indices(records: list[dict[str, Any]], objectives: Sequence[Objective],
                  budgets: Mapping[str, float]) -> list[int]:
    """Indices (ascending) of the records on the front: within budgets, then non-dominated."""
    idx = np.nonzero(feasible(records, objectives, budgets))[0]
    if not len(idx):
        return []
    f = objective_matrix([records[i] for i in idx], objectives)
    return [int(i) for i in idx[pareto_mask(f)]]


def pareto_mask(f: np.ndarray) -> np.ndarray:
    """Non-dominated rows of a minimisation matrix."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    mask = np.zeros(len(f), dtype=bool)
    if len(f):
        mask[NonDominatedSorting().do(f, only_non_dominated_front=True)] = True
    return mask


def hypervolume(f: np.ndarray, ideal: np.ndarray, nadir: np.ndarray) -> float:
    """Hypervolume of minimisation points normalised to [ideal, nadir] (reference point 1.1)."""
    from pymoo.indicators.hv import HV

    if not len(f):
        return 0.0
    z = (f - ideal) / np.maximum(nadir - ideal, 1e-12)
    z = z[(z <= 1.1).all(1)]
    return float(HV(ref_point=np.full(f.shape[1], 1.1))(z)) if len(z) else 0.0

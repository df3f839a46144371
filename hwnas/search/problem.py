"""The inner search's problem: pymoo over integer genes, accuracy objectives from predictors and
costs and latency computed exactly or by the latency model, all vectorised over a population
(thousands of predicted evaluations per LINAS round); budgets become pymoo inequality constraints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pymoo.core.problem import Problem

from .config import latency_target

if TYPE_CHECKING:
    from .runner import Search


class PredictedProblem(Problem):
    """pymoo problem over a search's genes whose accuracy objectives come from `predictors`
    (metric -> fitted predictor)."""

    def __init__(self, search: Search, predictors: dict[str, Any]) -> None:
        self.search = search
        self.predictors = predictors
        enc = search.encoding
        super().__init__(n_var=enc.n_genes, n_obj=len(search.cfg.objectives),
                         n_ieq_constr=len(search.cfg.budgets), xl=0, xu=enc.xu, vtype=int)

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        search, enc = self.search, self.search.encoding
        x = enc.repair(np.round(x).astype(int))
        keep, widths = enc.keep_mask(x), enc.width_values(x)
        values = predicted_values(search, self.predictors, x, keep, widths)
        out["F"] = np.stack([o.sign * values[o.metric] for o in search.cfg.objectives], 1)
        if search.cfg.budgets:
            out["G"] = search.budget_slack(values)


def predicted_values(search: Search, predictors: dict[str, Any], x: np.ndarray, keep: np.ndarray,
                     widths: np.ndarray) -> dict[str, np.ndarray]:
    """Metric -> values over genomes `x` (repaired; `keep` and `widths` decoded from them): exact
    costs, predicted latency where the run needs it, each predictor's accuracy metric."""
    values: dict[str, np.ndarray] = {}
    params = search.costs.params(keep, widths)
    values["params"] = params.astype(float)
    bits = None
    if search.space.compressed:
        from ..latency import format_bits

        names = np.asarray(search.encoding.formats, dtype=object)
        bits = format_bits(tuple(names[i] for i in search.encoding.format_indices(x)))
    values["size_mb"] = search.costs.counter.weight_bytes(keep, widths, bits) / 1e6
    needed = {o.metric for o in search.cfg.objectives} | set(search.cfg.budgets)
    if any(latency_target(m) for m in needed):
        values.update(search.latency_of(search.encoding.decode(x)))
    feats = None
    for metric, p in predictors.items():
        feats = search.encoding.features(x) if feats is None else feats
        values[metric] = p.predict_features(feats)
    return values

"""The search algorithms, by the name a run config gives (`algorithm:`): each runs on a `Search`
whose base model has been evaluated, spending its budget of real evaluations through
`Search.evaluate` and recording hypervolume progress in `Search.hv_history`.

- `linas`: round 0 evaluates the heuristic seeds and random sub-networks for real; each later round
  fits the accuracy predictor(s) on everything evaluated so far, runs NSGA-II on *predicted*
  objectives (`PredictedProblem`) and evaluates its final population for real, skipping
  sub-networks already evaluated. Each round's candidates are fixed in `rounds/round_NN.json`
  on first computation, so a resumed run evaluates the same ones.
- `nsga2`: plain NSGA-II on real evaluations (the baseline LINAS is compared with).
- `random`: the space's own sampler until the budget is spent.

Another algorithm is one more function and one more entry in `ALGORITHMS`. pymoo (the `search`
extra) is imported only when an algorithm runs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fileio import write_json
from ..subnet import Subnet
from .config import LinasConfig
from .front import budget_slack
from .store import record_values

if TYPE_CHECKING:
    from .runner import Search


def nsga2(lc: LinasConfig, pop_size: int | None = None, sampling: Any = None) -> Any:
    """pymoo's NSGA-II over integer genes with the run's operators (SBX and polynomial mutation,
    rounded); random integer sampling unless `sampling` is given."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    return NSGA2(
        pop_size=pop_size or lc.population,
        sampling=sampling if sampling is not None else IntegerRandomSampling(),
        crossover=SBX(prob=lc.crossover_prob, eta=lc.crossover_eta, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=lc.mutation_eta, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )


# --- linas ------------------------------------------------------------------------------------


def run_linas(search: Search) -> None:
    for r in range(search.cfg.linas.rounds + 1):
        cands, preds = _candidates(search, r)
        for s, p in zip(cands, preds):
            search.evaluate(s, r, p)
        search.hv_history.append((search.spent, search.current_hypervolume()))


def _round_file(search: Search, r: int) -> Path:
    return search.run_dir / "rounds" / f"round_{r:02d}.json"


def _candidates(search: Search, r: int) -> tuple[list[Subnet], list[dict[str, float]]]:
    """The sub-networks round r evaluates; fixed on first computation (a resume reuses them)."""
    path = _round_file(search, r)
    if path.is_file():
        data = json.loads(path.read_text())
        return ([Subnet.from_dict(c) for c in data["subnets"]],
                data.get("predicted", [{}] * len(data["subnets"])))
    rng = random.Random(search.cfg.seed * 1009 + r)
    lc = search.cfg.linas
    if r == 0:
        taken = set(search.store.keys)
        seeds = search.heuristic_seeds(lc.initial // 2, taken) if lc.seeds else []
        cands = seeds + search.random_new(lc.initial - len(seeds), rng, taken)
        preds: list[dict[str, float]] = [{}] * len(cands)
    else:
        cands, preds = _predicted_front(search, r, rng)
    write_json(path, {"version": 1, "round": r, "subnets": [c.to_dict() for c in cands], "predicted": preds})
    return cands, preds


def _predicted_front(search: Search, r: int, rng: random.Random) -> tuple[list[Subnet], list[dict[str, float]]]:
    """Round r's candidates: the final population of NSGA-II on predicted objectives, best ranked
    first, topped up at random where it repeats sub-networks already evaluated."""
    from pymoo.optimize import minimize

    from .problem import PredictedProblem

    prior = [rec for rec in search.store.records if rec["round"] < r]
    predictors = search.fit_predictors(prior)
    for metric, p in predictors.items():
        p.save(search.run_dir / "rounds" / f"predictor_{r:02d}_{metric.replace('.', '_')}.json")
    problem = PredictedProblem(search, predictors)
    lc = search.cfg.linas
    algo = nsga2(lc, sampling=_seed_population(search, prior, lc.population, rng))
    res = minimize(problem, algo, ("n_evals", lc.inner_evaluations), seed=search.cfg.seed * 31 + r, verbose=False)
    pop = res.pop
    order = np.lexsort((-np.nan_to_num(pop.get("crowding").ravel(), posinf=1e9), pop.get("rank").ravel()))
    taken = set(search.store.keys)
    cands, preds = [], []
    x_all = search.encoding.repair(pop.get("X")[order])
    f_all = pop.get("F")[order]
    for x, f in zip(x_all, f_all):
        s = search.encoding.decode(x)[0]
        if s.key() in taken:
            continue
        taken.add(s.key())
        cands.append(s)
        preds.append({o.metric: float(o.sign * v) for o, v in zip(search.cfg.objectives, f)})
        if len(cands) == lc.per_round:
            break
    if len(cands) < lc.per_round:
        extra = search.random_new(lc.per_round - len(cands), rng, taken)
        cands += extra
        preds += [{}] * len(extra)
    return cands, preds


def _seed_population(search: Search, prior: list[dict[str, Any]], size: int, rng: random.Random) -> np.ndarray:
    """Start the inner search from the best real points so far, topped up at random."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    f = search.objective_matrix(prior)
    fronts = NonDominatedSorting().do(f) if len(f) else []
    idx = [i for fr in fronts for i in fr][:size]
    xs = [search.encoding.encode(Subnet.from_dict(prior[i]["subnet"])) for i in idx]
    while len(xs) < size:
        xs.append(np.array([rng.randint(0, int(u)) for u in search.encoding.xu]))
    return search.encoding.repair(np.stack(xs))


# --- baselines --------------------------------------------------------------------------------


def run_random(search: Search) -> None:
    rng = random.Random(search.cfg.seed)
    taken = set(search.store.keys)
    while search.spent < search.budget:
        s = search.random_new(1, rng, taken)[0]
        search.evaluate(s, 0)
    search.hv_history.append((search.spent, search.current_hypervolume()))


def run_nsga2(search: Search) -> None:
    """Plain NSGA-II on real evaluations (the baseline LINAS is compared with)."""
    from pymoo.core.evaluator import Evaluator as PymooEvaluator
    from pymoo.core.problem import Problem

    cfg, enc = search.cfg, search.encoding
    lc = cfg.linas
    pop_size = max(10, lc.per_round // 2)
    problem = Problem(n_var=enc.n_genes, n_obj=len(cfg.objectives), n_ieq_constr=len(cfg.budgets), xl=0, xu=enc.xu,
                      vtype=int)
    algo = nsga2(lc, pop_size=pop_size)
    algo.setup(problem, seed=cfg.seed, termination=("n_gen", 10**9))
    gen = 0
    while search.spent < search.budget:
        pop = algo.ask()
        x = enc.repair(pop.get("X"))
        recs = []
        for s in enc.decode(x):
            if search.spent >= search.budget and s not in search.store:
                break
            recs.append(search.evaluate(s, gen))
        if len(recs) < len(x):
            break
        pop.set("X", x)
        pop.set("F", search.objective_matrix(recs))
        if cfg.budgets:
            pop.set("G", budget_slack(record_values(recs, cfg.budgets), cfg.objectives, cfg.budgets))
        PymooEvaluator().eval(problem, pop, skip_already_evaluated=True)
        algo.tell(infills=pop)
        gen += 1
    search.hv_history.append((search.spent, search.current_hypervolume()))


ALGORITHMS: dict[str, Callable[[Search], None]] = {"linas": run_linas, "nsga2": run_nsga2, "random": run_random}

"""One search run (`Search`): the base model in memory, the evaluator prepared once, every real
evaluation appended to the results store, the run's algorithm (`algorithms.ALGORITHMS`) spending the
budget, and the front written to `front.json` (`docs/formats.md`) when it is done.

A record holds the real metrics, the exact costs and every latency target the run's latency
model(s) predict; `Search.latency_of` and `Search.random_new` are what benchmarks and algorithms
build on. A run resumes from its folder: sub-networks already in the store are not evaluated again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..compression import Compression, bits_of
from ..errors import HwnasUserError
from ..fileio import write_json, write_yaml
from ..space import SearchSpace
from ..subnet import Subnet
from ..versions import dist_versions
from .algorithms import ALGORITHMS
from .config import LATENCY_METRICS, Objective, RunConfig
from .cost import CostModel
from .encoding import Encoding
from .front import budget_slack, feasible, front_indices, hypervolume, objective_matrix
from .store import STORE_FILE, EvalRecord, ResultsStore, metric_value

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class SearchResult:
    run_dir: Path
    records: list[dict[str, Any]]
    objectives: list[Objective]
    front: list[int]  # indices into records
    hypervolume_history: list[tuple[int, float]]


class Search:
    """One search run: model in memory, evaluator prepared once, store on disk."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, supernet=None, evaluator=None,
                 progress: ProgressFn | None = None, metrics_cache: dict[str, dict] | None = None) -> None:
        from ..outdir import check_out, claim_dir
        from ..supernet import open_supernet

        self.cfg = cfg
        check_out(run_dir, "search", legacy=(STORE_FILE,))
        self.sn = supernet or open_supernet(cfg.model, channel_order=cfg.channel_order, data_dir=cfg.data,
                                            dtype=cfg.dtype)
        if cfg.space:
            self.space = SearchSpace.load(cfg.space, num_layers=self.sn.num_layers,
                                          intermediate_size=self.sn.intermediate_size)
        else:
            self.space = self.sn.default_space()
        self.encoding = Encoding(self.space, self.sn.order.layer_scores if self.sn.order else None)
        self.costs = CostModel(self.sn.model.config)
        from ..latency import LatencyModel

        self.latencies = {name: LatencyModel.load(folder) for name, folder in cfg.latency_sources().items()}
        self.schemes = self._weight_schemes()
        if evaluator is None:
            from ..evaluate.evaluator import Evaluator

            evaluator = Evaluator(self.sn.base.tokenizer, cfg.tasks, limit=cfg.limit, seed=cfg.seed,
                                  data_dir=cfg.data, ppl_windows=cfg.ppl_windows, ppl_window=cfg.ppl_window)
        self.evaluator = evaluator
        # the folder is made only once everything the run needs has loaded (bad input leaves nothing)
        self.run_dir = claim_dir(run_dir, "search", legacy=(STORE_FILE,))
        (self.run_dir / "rounds").mkdir(exist_ok=True)
        self.store = ResultsStore(self.run_dir / STORE_FILE)
        mixed = sorted({r.get("dtype", "fp32") for r in self.store.records} - {self.sn.base.dtype})
        if mixed:  # one run, one numeric precision: its records (and the predictor fitted on them) never mix
            raise HwnasUserError(f"{self.run_dir / STORE_FILE} holds evaluations in {', '.join(mixed)}; this run "
                                 f"loads the model in {self.sn.base.dtype}: give the same --dtype, or another --out")
        self.progress = progress
        self.metrics_cache = metrics_cache  # subnet key -> metrics; shared by runs that compare algorithms
        self.hv_history: list[tuple[int, float]] = []
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None
        write_yaml(self.run_dir / "config.yaml", cfg.to_dict())
        self.space.save(self.run_dir / "space.yaml")

    def _weight_schemes(self) -> dict[str, Any]:
        """The target runtime's numerics for the space's weight formats (empty: fp32 only)."""
        from ..compression import check_formats, schemes_of

        if not self.space.compressed:
            return {}
        runtimes = {lm.profile.backend for lm in self.latencies.values()}
        runtime = self.cfg.backend or (runtimes.pop() if len(runtimes) == 1 else None)
        if runtime is None:
            raise HwnasUserError("the space searches weight formats: name the runtime that will run them "
                                 "(backend: in the run config; latency models of several backends do not say)")
        schemes = schemes_of(runtime)
        check_formats(self.space.weight_formats, schemes, f"{runtime} (space '{self.space.name}')")
        return schemes

    # objective values ----------------------------------------------------------------------

    @property
    def budget(self) -> int:
        lc = self.cfg.linas
        return lc.initial + lc.rounds * lc.per_round

    def latency_of(self, subnets: list[Subnet], every_target: bool = False) -> dict[str, np.ndarray]:
        """Predicted latency metrics (`target` or `target@device`): those the run optimizes or
        budgets, or every target of every device."""
        lat = self.cfg.latency
        needed = {o.metric for o in self.cfg.objectives} | set(self.cfg.budgets)
        out: dict[str, np.ndarray] = {}
        for name, lm in self.latencies.items():
            suffix = f"@{name}" if name else ""
            wanted = [t for t in LATENCY_METRICS if t + suffix in needed]
            if not (every_target or wanted):
                continue
            pred = lm.predict_subnets(subnets, prefill=lat["prefill"], decode=lat["decode"], batch=lat["batch"],
                                      targets=None if every_target else wanted)
            out.update({t + suffix: v for t, v in pred.items()})
        return out

    def objective_matrix(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Minimisation matrix of the real evaluations (accuracy real, costs exact, latency predicted)."""
        return objective_matrix(records, self.cfg.objectives)

    def budget_slack(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """(n, budgets) pymoo-style constraint values: <= 0 where a budget is met."""
        return budget_slack(values, self.cfg.objectives, self.cfg.budgets)

    def feasible(self, records: list[dict[str, Any]]) -> np.ndarray:
        return feasible(records, self.cfg.objectives, self.cfg.budgets)

    # real evaluation -------------------------------------------------------------------------

    @property
    def spent(self) -> int:
        """Real evaluations that count against the budget (the base model's does not)."""
        return sum(1 for r in self.store.records if not r.get("is_base"))

    def evaluate(self, s: Subnet, round_: int, predicted: dict[str, float] | None = None,
                 base: bool = False) -> dict[str, Any]:
        if s in self.store:
            return next(r for r in self.store.records if r["subnet"] == s.to_dict())
        import torch

        from .. import __version__

        t0 = time.perf_counter()
        cached = self.metrics_cache is not None and s.key() in self.metrics_cache
        if cached:
            metrics = self.metrics_cache[s.key()]
        else:
            from ..compression import simulate

            model = simulate(self.sn.materialize(s, share_weights=True), s.compression, self.schemes)
            with torch.no_grad():
                res = self.evaluator.evaluate(model)
            metrics = {name: tr.scores() for name, tr in res.tasks.items()}
            if self.metrics_cache is not None:
                self.metrics_cache[s.key()] = metrics
        lat = {k: float(v[0]) for k, v in self.latency_of([s], every_target=True).items()}
        rec = self.store.append(EvalRecord(
            run_id=self.run_dir.name, index=len(self.store), round=round_, is_base=base, subnet=s.to_dict(),
            metrics=metrics, costs=self.costs.of_subnet(s), latency_predicted=lat, latency_measured=None,
            predicted=predicted or {},
            device_profile=({n or "default": lm.profile_id for n, lm in self.latencies.items()}
                            if len(self.latencies) > 1 else next((lm.profile_id for lm in self.latencies.values()), None)),
            seeds={"run": self.cfg.seed, "eval": self.cfg.seed},
            versions={"hwnas": __version__, "torch": torch.__version__,
                      "transformers": dist_versions("transformers").get("transformers", "absent")},
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"), eval_seconds=round(time.perf_counter() - t0, 3),
            cached=cached, dtype=self.sn.base.dtype))
        self._report(round_)
        return rec

    def _report(self, round_: int) -> None:
        if self._bounds is None and len(self.store) >= 2:
            f = self.objective_matrix(self.store.records)
            self._bounds = (f.min(0), f.max(0))
        hv = self.current_hypervolume() if self._bounds is not None else 0.0
        if self.progress:
            self.progress({"round": round_, "evaluations": self.spent, "budget": self.budget, "hypervolume": hv})

    def current_hypervolume(self) -> float:
        recs = [r for r, ok in zip(self.store.records, self.feasible(self.store.records)) if ok]
        if not recs or self._bounds is None:
            return 0.0
        return hypervolume(self.objective_matrix(recs), *self._bounds)

    # candidates ------------------------------------------------------------------------------

    def random_new(self, n: int, rng: random.Random, taken: set[str]) -> list[Subnet]:
        out: list[Subnet] = []
        tries = 0
        while len(out) < n and tries < 100 * n:
            tries += 1
            # the space's own sampler: uniform depth, then layers and widths. Uniform random genes
            # keep each droppable layer with p=1/2 and repair to the minimum depth, so nearly every
            # random sub-network had the minimum depth (seen in a real run: round 0 all depth 24)
            d = self.encoding.space.sample(rng)
            s = Subnet.from_dict(d)
            if s.key() not in taken:
                taken.add(s.key())
                out.append(s)
        return out

    def heuristic_seeds(self, n: int, taken: set[str]) -> list[Subnet]:
        """Up to `n` sub-networks a user gets without searching, so the search starts where the
        baselines are (and its front can only improve on them): the base in each of the space's
        compressed formats (fewest bits first), then the greedy mixed-precision ladder where the
        space has two compressed formats per block (`format_ladder`), then ShortGPT-style layer
        dropping (a quarter, half and all of the droppable layers, least influential first) and one
        uniform MLP width, each with every weight in one format, most compressed first (the base in
        fp32 is the run's reference point already)."""
        space = self.space
        scores = self.sn.order.layer_scores if self.sn.order else None
        most = space.num_layers - min(space.allowed_depths)
        drops = sorted({k for k in (0, most // 4, most // 2, most)})
        full, mid = space.mlp_widths[-1], space.mlp_widths[len(space.mlp_widths) // 2]
        archs = [Subnet.dropping(space, scores, k, full) for k in drops] + [Subnet.dropping(space, scores, 0, mid)]
        formats = sorted(space.weight_formats, key=lambda f: bits_of(f) or 32)  # most compressed first
        uniform = [a if f == "fp32" else a.compressed(Compression.uniform(f, a.depth)) for a, f in
                   [(archs[0], f) for f in formats] + [(a, f) for f in formats for a in archs[1:]]]
        n_base = sum(1 for f in formats if f != "fp32")
        order = uniform[:n_base] + (self.format_ladder() if n > n_base else []) + uniform[n_base:]
        out: list[Subnet] = []
        for s in order:
            if len(out) < n and s.key() not in taken and (space.mode == "prefix" or s.depth in space.allowed_depths):
                taken.add(s.key())
                out.append(s)
        return out

    LADDER = (1 / 8, 1 / 4, 3 / 8, 1 / 2)  # shares of the blocks moved to the fewer-bit format
    CALIBRATION_TOKENS = (2, 256)  # calibration windows x tokens for the block sensitivities

    def format_ladder(self) -> list[Subnet]:
        """The full network with every block in the space's 8-bit format (int8, q8_0; else its
        second-fewest-bit one) but the k least sensitive in its fewest-bit format (int4, q4_0), k a
        share `LADDER` of the blocks: the
        mixed-precision recipe a quantization tool would hand-tune, ordered by
        `compression.block_sensitivity` on Alpaca calibration text (not the evaluation text). Empty
        unless the space has two compressed formats chosen per block."""
        from ..compression import PLAIN, block_sensitivity, mixed_ladder

        compressed = sorted((f for f in self.space.weight_formats if f != PLAIN), key=lambda f: bits_of(f) or 32)
        if len(compressed) < 2 or self.space.compression_per != "block":
            return []
        low = compressed[0]
        high = max((f for f in compressed[1:] if (bits_of(f) or 32) <= 9), key=lambda f: bits_of(f) or 32,
                   default=compressed[1])
        full = self.sn.full_subnet()
        order = block_sensitivity(lambda: self.sn.materialize(full, share_weights=True), self.schemes, high, low,
                                  self._calibration_ids())
        self.block_sensitivity = {"version": 1, "high": high, "low": low,
                                  "calibration": list(self.CALIBRATION_TOKENS), "blocks": [list(b) for b in order]}
        write_json(self.run_dir / "block_sensitivity.json", self.block_sensitivity)
        counts = sorted({max(1, round(len(order) * share)) for share in self.LADDER})
        return [full.compressed(c) for c in mixed_ladder(full.depth, order, high, low, counts)]

    def _calibration_ids(self) -> Any:
        import torch

        from ..data import ALPACA, alpaca_texts, find_data_file

        n, length = self.CALIBRATION_TOKENS
        text = "\n\n".join(alpaca_texts(find_data_file(ALPACA, self.cfg.data))[:400])
        ids = self.sn.base.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        if ids.numel() < n * length:
            n = max(1, ids.numel() // length)
        return ids[: n * length].reshape(n, -1).to(torch.long)

    def fit_predictors(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        from ..predictors import fit_predictor

        x = self.encoding.features(np.stack([self.encoding.encode(Subnet.from_dict(r["subnet"]))
                                             for r in records]))
        out = {}
        for o in self.cfg.objectives:
            if o.kind == "accuracy":
                y = [metric_value(r, o.metric) for r in records]
                out[o.metric] = fit_predictor(x, y, target=o.metric, seed=self.cfg.seed)
        return out

    # the run ---------------------------------------------------------------------------------

    def run(self) -> SearchResult:
        self.evaluate(self.sn.full_subnet(), 0, base=True)  # the reference point of every report
        ALGORITHMS[self.cfg.algorithm](self)
        return self.result()

    def result(self) -> SearchResult:
        recs = self.store.records
        front = front_indices(recs, self.cfg.objectives, self.cfg.budgets)
        write_json(self.run_dir / "front.json", {
            "version": 1, "objectives": [asdict(o) for o in self.cfg.objectives], "budgets": self.cfg.budgets,
            "front": [{"index": recs[i]["index"], "subnet": recs[i]["subnet"],
                       **{o.metric: metric_value(recs[i], o.metric) for o in self.cfg.objectives}} for i in front],
            "hypervolume_history": self.hv_history})
        return SearchResult(self.run_dir, recs, self.cfg.objectives, front, self.hv_history)

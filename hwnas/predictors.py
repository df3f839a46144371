"""Accuracy predictor for LINAS: architecture encoding -> accuracy (or perplexity), fitted on
evaluated sub-networks.

Candidates are Ridge, RBF-SVR (what DyNAS-T uses) and LightGBM; k-fold cross-validation on the
training points picks one (by Kendall tau, ties by MAPE). scikit-learn and LightGBM fit; the fitted
model is stored as JSON (Ridge coefficients / SVR support vectors with their dual coefficients and
gamma, with the feature scaling) or LightGBM text inside JSON - never pickle - and predicts with
numpy, vectorised for the tens of thousands of candidates NSGA-II asks about.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HwnasUserError, is_number
from .fileio import write_json
from .space import SearchSpace
from .subnet import Subnet

PREDICTOR_VERSION = 1
KINDS = ("ridge", "svr", "lightgbm")


def subnet_features(subnets: Sequence[Subnet], space: SearchSpace) -> np.ndarray:
    """Per base layer: kept (0/1) and MLP width / base width (0 when dropped); then depth and the
    kept MLP fraction; in a space with compression genes, then per base layer the attention's and
    the MLP's compression amount (1 - bits / 32; 0 when dropped or fp32) and the embedding's and
    the head's. Fixed length for a space, so any sub-network of it can be scored."""
    from .compression import Compression, compression_amount

    n = space.num_layers
    x = np.zeros((len(subnets), (4 * n + 4) if space.compressed else (2 * n + 2)), dtype=np.float64)
    for r, s in enumerate(subnets):
        idx = np.asarray(s.layers)
        x[r, idx] = 1.0
        x[r, n + idx] = np.asarray(s.mlp_widths) / space.intermediate_size
        x[r, 2 * n] = s.depth / n
        x[r, 2 * n + 1] = float(np.sum(s.mlp_widths)) / (n * space.intermediate_size)
        if space.compressed:
            c = s.compression or Compression.uniform("fp32", s.depth)
            x[r, 2 * n + 2 + idx] = [compression_amount(f) for f in c.attn]
            x[r, 3 * n + 2 + idx] = [compression_amount(f) for f in c.mlp]
            x[r, 4 * n + 2] = compression_amount(c.embed)
            x[r, 4 * n + 3] = compression_amount(c.head)
    return x


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def mape(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return float(np.mean(np.abs(p - t) / np.maximum(np.abs(t), 1e-12)))


@dataclass
class AccuracyPredictor:
    """A fitted regressor with its scaling; `target` names what it predicts (e.g. 'wikitext2.ppl')."""

    kind: str
    target: str
    params: dict[str, Any]
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float
    y_scale: float
    log_target: bool = False
    cv: dict[str, Any] = field(default_factory=dict)

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.x_mean) / self.x_scale
        if self.kind == "ridge":
            y = z @ np.asarray(self.params["coef"]) + self.params["intercept"]
        elif self.kind == "svr":
            sv = np.asarray(self.params["support_vectors"])
            d2 = (z**2).sum(1)[:, None] + (sv**2).sum(1)[None, :] - 2 * z @ sv.T
            y = np.exp(-self.params["gamma"] * np.maximum(d2, 0)) @ np.asarray(self.params["dual_coef"])
            y = y + self.params["intercept"]
        else:
            import lightgbm as lgb

            booster = lgb.Booster(model_str=self.params["model"])
            y = booster.predict(z)
        y = y * self.y_scale + self.y_mean
        return np.exp(y) if self.log_target else y

    def predict(self, subnets: Sequence[Subnet], space: SearchSpace) -> np.ndarray:
        return self.predict_features(subnet_features(subnets, space))

    def to_dict(self) -> dict[str, Any]:
        return {"version": PREDICTOR_VERSION, "kind": self.kind, "target": self.target,
                "log_target": self.log_target, "params": self.params,
                "x_mean": self.x_mean.tolist(), "x_scale": self.x_scale.tolist(),
                "y_mean": self.y_mean, "y_scale": self.y_scale, "cv": self.cv}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> AccuracyPredictor:
        """Read a predictor JSON (written by `save`); anything malformed is a one-line `HwnasUserError`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise HwnasUserError(f"predictor file not found: {path}") from exc
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            raise HwnasUserError(f"{path}: not a readable predictor JSON file ({type(exc).__name__})") from exc
        return cls.from_dict(d, source=str(path))

    @classmethod
    def from_dict(cls, d: Any, source: str = "<predictor>") -> AccuracyPredictor:
        def fail(what: str) -> HwnasUserError:
            return HwnasUserError(f"{source}: {what}; fit the predictor again")

        if not isinstance(d, dict):
            raise fail("a predictor must be a JSON object")
        if d.get("version") != PREDICTOR_VERSION:
            raise HwnasUserError(f"{source}: unsupported predictor version {_short(d.get('version'))}")
        missing = [k for k in ("kind", "target", "params", "x_mean", "x_scale", "y_mean", "y_scale", "log_target")
                   if k not in d]
        if missing:
            raise fail(f"missing {', '.join(missing)}")
        if d["kind"] not in KINDS:
            raise fail(f"unknown kind {_short(d['kind'])}; expected one of {', '.join(KINDS)}")
        if not isinstance(d["target"], str) or not isinstance(d["log_target"], bool):
            raise fail("target must be text and log_target true or false")
        x_mean, x_scale = _vector(d["x_mean"]), _vector(d["x_scale"])
        if x_mean is None or x_scale is None or len(x_mean) != len(x_scale) or not len(x_mean) or (x_scale == 0).any():
            raise fail("x_mean and x_scale must be equally long lists of numbers (x_scale non-zero)")
        if not (is_number(d["y_mean"]) and is_number(d["y_scale"]) and d["y_scale"] != 0):
            raise fail("y_mean and y_scale must be numbers (y_scale non-zero)")
        params = d["params"]
        if not isinstance(params, dict):
            raise fail("params must be a JSON object")
        n = len(x_mean)
        if d["kind"] == "ridge":
            coef = _vector(params.get("coef"))
            if coef is None or len(coef) != n or not is_number(params.get("intercept")):
                raise fail(f"a ridge predictor needs coef ({n} numbers) and intercept")
        elif d["kind"] == "svr":
            sv, dual = params.get("support_vectors"), _vector(params.get("dual_coef"))
            try:
                sv = np.asarray(sv, dtype=np.float64) if isinstance(sv, list) else None
            except (TypeError, ValueError, OverflowError):
                sv = None
            if (sv is None or sv.ndim != 2 or sv.shape[1] != n or dual is None or len(dual) != len(sv)
                    or not np.isfinite(sv).all() or not is_number(params.get("gamma"))
                    or not is_number(params.get("intercept"))):
                raise fail(f"an svr predictor needs support_vectors (rows of {n} numbers), dual_coef, gamma and "
                           "intercept")
        else:
            from .latency import load_booster

            if not isinstance(params.get("model"), str):
                raise fail("a lightgbm predictor needs its model text in params.model")
            try:
                booster = load_booster(model_str=params["model"])
            except ValueError as exc:
                raise fail("params.model is not a LightGBM text model") from exc
            if booster.num_feature() != n:
                raise fail(f"the LightGBM model has {booster.num_feature()} features, the scaling {n}")
        return cls(kind=d["kind"], target=d["target"], params=params, x_mean=x_mean, x_scale=x_scale,
                   y_mean=float(d["y_mean"]), y_scale=float(d["y_scale"]), log_target=d["log_target"],
                   cv=d.get("cv") if isinstance(d.get("cv"), dict) else {})




def _vector(x: Any) -> np.ndarray | None:
    """A list of finite numbers as a float array, or None."""
    if not isinstance(x, list) or not all(is_number(v) for v in x):
        return None
    return np.asarray(x, dtype=np.float64)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fit_one(kind: str, z: np.ndarray, yz: np.ndarray, seed: int) -> dict[str, Any]:
    if kind == "ridge":
        from sklearn.linear_model import RidgeCV

        m = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(z, yz)
        return {"coef": m.coef_.tolist(), "intercept": float(m.intercept_), "alpha": float(m.alpha_)}
    if kind == "svr":
        from sklearn.svm import SVR

        gamma = 1.0 / z.shape[1]
        m = SVR(kernel="rbf", C=10.0, epsilon=0.01, gamma=gamma).fit(z, yz)
        return {"support_vectors": m.support_vectors_.tolist(), "dual_coef": m.dual_coef_[0].tolist(),
                "intercept": float(m.intercept_[0]), "gamma": gamma, "C": 10.0, "epsilon": 0.01}
    if kind == "lightgbm":
        import lightgbm as lgb

        n = len(yz)
        m = lgb.LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=15,
                              min_child_samples=max(3, n // 20), subsample=0.8, subsample_freq=1,
                              colsample_bytree=0.8, random_state=seed, verbose=-1).fit(z, yz)
        return {"model": m.booster_.model_to_string()}
    raise HwnasUserError(f"unknown predictor kind '{kind}'; choose from {KINDS}")


def _make(kind: str, target: str, x: np.ndarray, y: np.ndarray, log_target: bool, seed: int) -> AccuracyPredictor:
    yt = np.log(y) if log_target else y
    x_mean, x_scale = x.mean(0), x.std(0)
    x_scale[x_scale == 0] = 1.0
    y_mean, y_scale = float(yt.mean()), float(yt.std() or 1.0)
    z = (x - x_mean) / x_scale
    params = _fit_one(kind, z, (yt - y_mean) / y_scale, seed)
    return AccuracyPredictor(kind, target, params, x_mean, x_scale, y_mean, y_scale, log_target)


def fit_predictor(x: np.ndarray, y: Sequence[float], *, target: str, kinds: Sequence[str] = KINDS,
                  log_target: bool | None = None, folds: int = 5, seed: int = 0) -> AccuracyPredictor:
    """Choose among `kinds` by k-fold CV (Kendall tau), then refit the winner on all points.
    Perplexity-like targets (all positive, wide range) are modelled in log space by default."""
    y = np.asarray(y, dtype=float)
    if len(y) < 6:
        raise HwnasUserError(f"an accuracy predictor needs at least 6 evaluated sub-networks, got {len(y)}")
    if log_target is None:
        log_target = bool(np.all(y > 0) and y.max() / y.min() > 3)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    k = min(folds, len(y) // 3)
    scores: dict[str, dict[str, float]] = {}
    for kind in kinds:
        preds = np.zeros_like(y)
        for f in range(k):
            test = order[f::k]
            train = np.setdiff1d(order, test)
            preds[test] = _make(kind, target, x[train], y[train], log_target, seed).predict_features(x[test])
        scores[kind] = {"kendall_tau": kendall_tau(y, preds), "mape": mape(y, preds)}
    best = max(kinds, key=lambda kd: (scores[kd]["kendall_tau"], -scores[kd]["mape"]))
    model = _make(best, target, x, y, log_target, seed)
    model.cv = {"folds": k, "n": int(len(y)), "scores": scores, "chosen": best}
    return model

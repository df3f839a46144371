"""Accuracy predictor: learns a real relation, picks by CV, round-trips through JSON exactly."""

import random

import numpy as np
import pytest

from hwnas.errors import HwnasUserError
from hwnas.predictors import AccuracyPredictor, fit_predictor, kendall_tau, subnet_features
from hwnas.space import SearchSpace
from hwnas.subnet import Subnet

SPACE = SearchSpace.from_dict({"base": {"num_layers": 8, "intermediate_size": 512},
                               "layers": {"min_depth": 5}, "mlp": {"widths": [128, 256, 384, 512]}})


def synthetic(n, seed):
    """A made-up but structured 'perplexity': dropping layers and narrowing MLPs hurt, unequally."""
    rng = random.Random(seed)
    subs = [Subnet.parse(SPACE.sample(rng), num_layers=8, intermediate_size=512) for _ in range(n)]
    weight = np.linspace(2.0, 0.5, 8)
    y = []
    for s in subs:
        loss = sum(weight[i] * (1 - w / 512) for i, w in zip(s.layers, s.mlp_widths))
        loss += sum(weight[i] * 1.5 for i in range(8) if i not in s.layers)
        y.append(float(np.exp(3 + 0.5 * loss)))
    return subs, np.asarray(y)


@pytest.mark.parametrize("kind", ["ridge", "svr", "lightgbm"])
def test_each_kind_ranks_held_out_subnets(kind, tmp_path):
    subs, y = synthetic(120, 0)
    test_subs, y_test = synthetic(60, 1)
    p = fit_predictor(subnet_features(subs, SPACE), y, target="ppl", kinds=[kind])
    assert p.kind == kind and p.log_target
    pred = p.predict(test_subs, SPACE)
    assert kendall_tau(y_test, pred) > 0.6
    p.save(tmp_path / "p.json")
    back = AccuracyPredictor.load(tmp_path / "p.json")
    assert np.array_equal(back.predict(test_subs, SPACE), pred)


def test_cv_choice_is_recorded():
    subs, y = synthetic(60, 2)
    p = fit_predictor(subnet_features(subs, SPACE), y, target="ppl")
    assert p.cv["chosen"] == p.kind and set(p.cv["scores"]) == {"ridge", "svr", "lightgbm"}


def test_too_few_points_is_a_user_error():
    subs, y = synthetic(4, 3)
    with pytest.raises(HwnasUserError, match="at least 6"):
        fit_predictor(subnet_features(subs, SPACE), y, target="ppl")


def test_features_encode_layers_and_widths():
    s = Subnet((0, 3), (512, 128))
    x = subnet_features([s], SPACE)[0]
    assert x[0] == 1 and x[1] == 0 and x[3] == 1
    assert x[8] == 1.0 and x[8 + 3] == 0.25 and x[8 + 1] == 0

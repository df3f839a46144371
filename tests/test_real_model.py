"""Foundation checks on the real SmolLM2-135M (embedded default)."""

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from hwnas.modeling import analytic_parameter_count, mlp_widths_of, parameter_count
from hwnas.supernet import Supernet

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def supernet(smollm2):
    return Supernet(smollm2)


def test_shape_of_embedded_default(smollm2):
    c = smollm2.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads) == (9, 3)
    assert parameter_count(smollm2.model) == analytic_parameter_count(c, [1536] * 30) == 134_515_008


def test_full_subnet_logits_equal_base(supernet, smollm2):
    ids = smollm2.tokenizer("The capital of France is Paris. The tallest mountain is", return_tensors="pt").input_ids
    full = supernet.materialize(supernet.full_subnet())
    with torch.no_grad():
        diff = (full(ids).logits - smollm2.model(ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_random_subnets_parameter_counts(supernet):
    space = supernet.default_space()
    rng = random.Random(0)
    for _ in range(3):
        s = supernet.parse_subnet(space.sample(rng), space=space)
        m = supernet.materialize(s, share_weights=True)
        assert parameter_count(m) == analytic_parameter_count(m.config, list(s.mlp_widths))


def test_heterogeneous_round_trip_exact(supernet, smollm2, tmp_path):
    s = supernet.parse_subnet({"layers": [i for i in range(30) if i not in (7, 19)],
                               "mlp_widths": [1536, 256, 512, 768, 1024, 1280, 1536] * 4})
    m = supernet.materialize(s)
    out = supernet.save_subnet(s, tmp_path / "sub", model=m)
    back = AutoModelForCausalLM.from_pretrained(out)
    assert mlp_widths_of(back) == list(s.mlp_widths)
    ids = smollm2.tokenizer("Hello, my name is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(back(ids).logits, m(ids).logits)
    meta = json.loads((out / "hwnas_subnet.json").read_text())
    assert meta["subnet"] == s.to_dict()


def test_materialize_in_memory_is_fast(supernet):
    import time

    s = supernet.parse_subnet(supernet.default_space().sample(random.Random(3)))
    supernet.materialize(s, share_weights=True)  # warm
    t0 = time.perf_counter()
    supernet.materialize(s, share_weights=True)
    assert time.perf_counter() - t0 < 1.0

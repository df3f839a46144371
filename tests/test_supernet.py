"""Materialization on tiny random models of every supported family."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from hwnas.modeling import analytic_parameter_count, mlp_widths_of, parameter_count
from hwnas.space import SearchSpace
from hwnas.supernet import ChannelOrder, Supernet


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def test_full_subnet_equals_base(tiny_any_family):
    sn = Supernet(tiny_any_family)
    sub = sn.materialize(sn.full_subnet())
    assert (logits(sub, IDS) - logits(tiny_any_family.model, IDS)).abs().max() <= 1e-6


def test_parameter_count_is_analytic(tiny_any_family):
    sn = Supernet(tiny_any_family)
    assert parameter_count(tiny_any_family.model) == analytic_parameter_count(
        tiny_any_family.config, sn.base_widths)
    s = sn.parse_subnet({"layers": [0, 2, 3], "mlp_widths": [64, 256, 128]})
    sub = sn.materialize(s)
    assert mlp_widths_of(sub) == [64, 256, 128]
    assert parameter_count(sub) == analytic_parameter_count(sub.config, [64, 256, 128])
    assert parameter_count(sub) < parameter_count(tiny_any_family.model)


def test_sliced_weights_are_the_first_channels(tiny_llama):
    sn = Supernet(tiny_llama)
    sub = sn.materialize(sn.parse_subnet({"layers": [1, 3], "mlp_widths": [64, 128]}))
    base_l3 = tiny_llama.model.model.layers[3].mlp
    sub_l1 = sub.model.layers[1].mlp
    assert torch.equal(sub_l1.gate_proj.weight, base_l3.gate_proj.weight[:128])
    assert torch.equal(sub_l1.down_proj.weight, base_l3.down_proj.weight[:, :128])
    assert torch.equal(sub.model.layers[0].self_attn.q_proj.weight,
                       tiny_llama.model.model.layers[1].self_attn.q_proj.weight)


def test_materialized_copy_does_not_alias_base(tiny_llama):
    sn = Supernet(tiny_llama)
    sub = sn.materialize(sn.full_subnet())
    before = tiny_llama.model.model.embed_tokens.weight.clone()
    with torch.no_grad():
        sub.model.embed_tokens.weight.add_(1.0)
    assert torch.equal(tiny_llama.model.model.embed_tokens.weight, before)


def test_heterogeneous_save_load_round_trip_is_exact(tiny_any_family, tmp_path):
    sn = Supernet(tiny_any_family)
    s = sn.parse_subnet({"layers": [0, 1, 3], "mlp_widths": [256, 64, 192]})
    sub = sn.materialize(s)
    out = sn.save_subnet(s, tmp_path / "sub", model=sub)
    back = AutoModelForCausalLM.from_pretrained(out)
    assert type(back).__name__.startswith("Hwnas")
    assert mlp_widths_of(back) == [256, 64, 192]
    assert torch.equal(logits(back, IDS), logits(sub, IDS))
    assert (out / "hwnas_subnet.json").is_file() and (out / "tokenizer.json").is_file()


def test_uniform_subnet_saves_as_plain_family_class(tiny_llama, tmp_path):
    sn = Supernet(tiny_llama)
    s = sn.parse_subnet({"layers": [0, 3], "mlp_widths": [128, 128]})
    out = sn.save_subnet(s, tmp_path / "u")
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["intermediate_size"] == 128
    assert "intermediate_size_per_layer" not in cfg
    back = AutoModelForCausalLM.from_pretrained(out)
    assert type(back).__name__ == "LlamaForCausalLM"


def test_channel_order_is_function_preserving_and_changes_slices(tiny_llama):
    ref = logits(tiny_llama.model, IDS)
    rng = random.Random(0)
    perms = []
    for w in [256] * 4:
        p = list(range(w))
        rng.shuffle(p)
        perms.append(p)
    first = tiny_llama.model.model.layers[0].mlp.gate_proj.weight[perms[0][:8]].clone()
    sn = Supernet(tiny_llama, order=ChannelOrder(mlp=perms, method="shuffle"))
    assert torch.allclose(logits(tiny_llama.model, IDS), ref, atol=1e-5)
    sub = sn.materialize(sn.parse_subnet({"layers": [0], "mlp_widths": [64]}))
    assert torch.equal(sub.model.layers[0].mlp.gate_proj.weight[:8], first)
    with pytest.raises(ValueError, match="permutation"):
        ChannelOrder(mlp=[[0] * 256] * 4).apply_to(tiny_llama.model)


def test_random_subnets_from_default_space(tiny_llama):
    sn = Supernet(tiny_llama)
    space = SearchSpace.default_for(4, 256)
    rng = random.Random(0)
    for _ in range(5):
        s = sn.parse_subnet(space.sample(rng), space=space)
        sub = sn.materialize(s, share_weights=True)
        assert parameter_count(sub) == analytic_parameter_count(sub.config, list(s.mlp_widths))
        assert logits(sub, IDS).shape == (2, 12, 128)

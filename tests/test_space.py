import random

import pytest

from hwnas.errors import SpaceError
from hwnas.space import SearchSpace


def test_llamanas_space_size_matches_the_paper():
    space = SearchSpace.packaged("llama2-7b-llamanas")
    assert space.encoding_size == 3 * 2**32  # LLaMA-NAS: depth {24,28,32} x 32 binary width genes
    assert space.distinct_subnets == 2**24 + 2**28 + 2**32


def test_smollm2_default_space():
    space = SearchSpace.packaged("smollm2-135m", num_layers=30, intermediate_size=1536)
    assert space.mlp_widths == (256, 512, 768, 1024, 1280, 1536)
    assert space.allowed_depths == tuple(range(24, 31))
    # 0..6 of the 26 droppable layers dropped, each kept layer one of 6 widths
    from math import comb

    assert len(space.droppable_layers) == 26 and 0 not in space.droppable_layers
    assert space.distinct_subnets == sum(comb(26, 30 - d) * 6**d for d in range(24, 31))


def test_widths_must_be_multiples_of_64():
    with pytest.raises(SpaceError, match="multiples of 64"):
        SearchSpace.from_dict({"base": {"num_layers": 4, "intermediate_size": 256}, "mlp": {"widths": [100, 256]}})


def test_space_rejects_mismatched_model_and_unknown_keys(tmp_path):
    with pytest.raises(SpaceError, match="num_layers is 30 but the model has 4"):
        SearchSpace.packaged("smollm2-135m", num_layers=4, intermediate_size=1536)
    with pytest.raises(SpaceError, match="unknown keys"):
        SearchSpace.from_dict({"base": {"num_layers": 4, "intermediate_size": 256}, "widths": [64]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [unclosed")
    with pytest.raises(SpaceError, match="not valid YAML"):
        SearchSpace.load(bad)


def test_sample_stays_in_space_and_round_trips(tmp_path):
    from hwnas.subnet import Subnet

    space = SearchSpace.packaged("smollm2-135m", num_layers=30, intermediate_size=1536)
    rng = random.Random(0)
    depths = set()
    for _ in range(50):
        s = Subnet.parse(space.sample(rng), num_layers=30, intermediate_size=1536, space=space)
        depths.add(s.depth)
    assert len(depths) > 3
    space.save(tmp_path / "s.yaml")
    assert SearchSpace.load(tmp_path / "s.yaml") == space


def test_prefix_space_sampling():
    space = SearchSpace.packaged("llama2-7b-llamanas")
    s = space.sample(random.Random(1))
    assert s["layers"] == list(range(len(s["layers"])))
    assert len(s["layers"]) in (24, 28, 32)


def test_generic_default_space():
    space = SearchSpace.default_for(32, 11008)
    assert all(w % 64 == 0 and w <= 11008 for w in space.mlp_widths)
    assert space.min_depth == 24


def test_finetuned_folder_keeps_its_base_models_packaged_space(tmp_path):
    """`hwnas finetune` output searched without --space gets the base model's space, not the generic one."""
    from hwnas.space import FINETUNE_RECORD

    first, second, plain = tmp_path / "ft1", tmp_path / "ft2", tmp_path / "plain"
    for d in (first, second, plain):
        d.mkdir()
    (first / FINETUNE_RECORD).write_text("version: 1\nbase: {spec: smollm2-135m}\n")
    (second / FINETUNE_RECORD).write_text(f"version: 1\nbase: {{spec: '{first}'}}\n")  # fine-tuned twice
    packaged = SearchSpace.packaged("smollm2-135m", num_layers=30, intermediate_size=1536)
    for d in (first, second):
        got = SearchSpace.for_model(str(d), 30, 1536)
        assert got.name == packaged.name and got.min_depth == packaged.min_depth
        assert got.droppable_layers == packaged.droppable_layers
    generic = SearchSpace.for_model(str(plain), 30, 1536)
    assert generic.name == "plain-default" and generic.droppable_layers == tuple(range(30))

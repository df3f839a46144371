import pytest

from hwnas.errors import SubnetError
from hwnas.space import SearchSpace
from hwnas.subnet import Subnet

N, W = 4, 256
SPACE = SearchSpace.from_dict({"base": {"num_layers": N, "intermediate_size": W},
                               "layers": {"min_depth": 2}, "mlp": {"widths": [64, 128, 256]}})

BAD = {
    "not an object": ([0, 1], "JSON object"),
    "missing layers": ({"mlp_widths": [64]}, "missing"),
    "unknown key": ({"layers": [0], "mlp_width": [64]}, "unknown keys"),
    "empty": ({"layers": []}, "empty"),
    "index out of range": ({"layers": [0, 4]}, "out of range"),
    "negative index": ({"layers": [-1, 0]}, "out of range"),
    "duplicate": ({"layers": [0, 1, 1]}, "twice"),
    "unordered": ({"layers": [1, 0]}, "increasing"),
    "non-int": ({"layers": [0, "1"]}, "integers"),
    "length mismatch": ({"layers": [0, 1], "mlp_widths": [64]}, "entries"),
    "width too large": ({"layers": [0, 1], "mlp_widths": [64, 512]}, "larger than the base"),
    "width zero": ({"layers": [0], "mlp_widths": [0]}, "positive"),
}
BAD_IN_SPACE = {
    "width not in space": ({"layers": [0, 1, 2], "mlp_widths": [64, 192, 64]}, "not in the space"),
    "too shallow": ({"layers": [0]}, "depth 1 is not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_subnets_raise_one_line(case):
    data, match = BAD[case]
    with pytest.raises(SubnetError, match=match) as err:
        Subnet.parse(data, num_layers=N, intermediate_size=W)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD_IN_SPACE))
def test_bad_subnets_against_space(case):
    data, match = BAD_IN_SPACE[case]
    Subnet.parse(data, num_layers=N, intermediate_size=W)  # valid for the model alone
    with pytest.raises(SubnetError, match=match):
        Subnet.parse(data, num_layers=N, intermediate_size=W, space=SPACE)


def test_omitted_widths_mean_full_width_and_key_is_canonical():
    s = Subnet.parse({"layers": [0, 2]}, num_layers=N, intermediate_size=W)
    assert s.mlp_widths == (W, W)
    assert s.key() == '{"layers":[0,2],"mlp_widths":[256,256]}'


def test_heterogeneous_base_widths_are_respected():
    with pytest.raises(SubnetError, match="larger than the base's 128"):
        Subnet.parse({"layers": [0, 1], "mlp_widths": [64, 256]}, num_layers=2, intermediate_size=[256, 128])


def test_load_errors(tmp_path):
    with pytest.raises(SubnetError, match="not found"):
        Subnet.load(tmp_path / "nope.json", num_layers=N, intermediate_size=W)
    p = tmp_path / "bad.json"
    p.write_text("{layers: 1")
    with pytest.raises(SubnetError, match="not valid JSON"):
        Subnet.load(p, num_layers=N, intermediate_size=W)

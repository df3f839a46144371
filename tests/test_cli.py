"""The CLI: user errors are one line on stderr and exit code 2."""

import json

import pytest

from hwnas.cli import main

BAD_SUBNETS = {
    "out_of_range": {"layers": [0, 9]},
    "duplicate": {"layers": [0, 0]},
    "too_wide": {"layers": [0], "mlp_widths": [999]},
    "length_mismatch": {"layers": [0, 1], "mlp_widths": [64]},
    "not_in_space": {"layers": [0, 1, 2, 3], "mlp_widths": [64, 64, 64, 96]},
    "unknown_key": {"layer": [0]},
}


@pytest.mark.parametrize("case", sorted(BAD_SUBNETS))
def test_bad_subnet_exits_2_with_one_line(case, tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "s.json"
    f.write_text(json.dumps(BAD_SUBNETS[case]))
    space = tmp_path / "space.yaml"
    space.write_text("layers: {min_depth: 1}\nmlp:\n  widths: [64, 128, 192, 256]\n")
    args = ["subnet", "--model", str(tiny_model_dir), "--subnet", str(f), "--out", str(tmp_path / "o"),
            "--channel-order", "none"]
    if case == "not_in_space":
        args += ["--space", str(space)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err
    assert not (tmp_path / "o").exists()


def test_missing_files_exit_2(tiny_model_dir, tmp_path, capsys):
    assert main(["subnet", "--model", str(tiny_model_dir), "--subnet", str(tmp_path / "x.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["subnet", "--model", str(tmp_path / "nomodel"), "--subnet", "x", "--out", "o"]) == 2
    assert main(["space", "--space", str(tmp_path / "none.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all("error:" in line for line in lines)


def test_not_llama_family_is_refused(tmp_path, capsys):
    from transformers import GPT2Config

    d = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(d)
    assert main(["space", "--model", str(d)]) == 2
    err = capsys.readouterr().err
    assert "not supported" in err and "llama" in err


def test_subnet_command_writes_loadable_folder(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"layers": [0, 2], "mlp_widths": [64, 192]}))
    assert main(["subnet", "--model", str(tiny_model_dir), "--subnet", str(f),
                 "--out", str(tmp_path / "o"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subnet"] == {"layers": [0, 2], "mlp_widths": [64, 192]}
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert m.config.num_hidden_layers == 2
    # the written folder is itself a valid --model
    f2 = tmp_path / "s2.json"
    f2.write_text(json.dumps({"layers": [1], "mlp_widths": [128]}))
    assert (tmp_path / "o" / "hwnas_order.json").is_file()  # ordered by default; recorded
    assert list((tmp_path / "cache" / "orders").glob("*.json"))
    assert main(["subnet", "--model", str(tmp_path / "o"), "--subnet", str(f2), "--out", str(tmp_path / "o2")]) == 0
    f2.write_text(json.dumps({"layers": [0], "mlp_widths": [128]}))  # layer 0 is 64 wide now
    assert main(["subnet", "--model", str(tmp_path / "o"), "--subnet", str(f2), "--out", str(tmp_path / "o3")]) == 2


def test_space_json_for_yaml_only_space(capsys):
    from importlib import resources

    path = resources.files("hwnas") / "spaces" / "llama2-7b-llamanas.yaml"
    assert main(["space", "--space", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["size"]["encoding_size"] == 3 * 2**32


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("space", "subnet", "demo"):
        assert cmd in out

"""One-shot pruning: the asked sparsity and structure are met, SparseGPT/Wanda (llm-compressor) keep
the function closer than magnitude, the folder is a model every command takes, DeepSparse keeps it."""

import json

import pytest
import torch
from conftest import make_tiny

from hwnas.cli import main
from hwnas.errors import HwnasUserError
from hwnas.prune import PruneConfig, achieved_sparsity, decoder_linears, magnitude_prune, prune
from hwnas.supernet import Supernet


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text(" ".join(f"w{(i * 7 + i // 13) % 50}" for i in range(6000)))
    return p


def _ids(tokenizer, text_file):
    return tokenizer(text_file.read_text()[:3000], return_tensors="pt")["input_ids"][:, :128]


def _error(dense, pruned, ids) -> float:
    with torch.no_grad():
        return (dense(ids).logits - pruned(ids).logits).pow(2).mean().item()


def test_magnitude_meets_unstructured_and_n_m_sparsity():
    model = make_tiny("llama").model
    magnitude_prune(model, 0.3)
    a = achieved_sparsity(model)
    assert a["overall"] == pytest.approx(0.3, abs=0.01) and len(a["layers"]) == 4
    model = make_tiny("llama").model
    magnitude_prune(model, 0.0, "2:4")
    for _i, _kind, lin in decoder_linears(model):
        groups = lin.weight.view(lin.weight.shape[0], -1, 4)
        assert ((groups == 0).sum(-1) >= 2).all()
    assert achieved_sparsity(model)["overall"] == pytest.approx(0.5, abs=0.001)
    assert (model.model.embed_tokens.weight != 0).all()  # embeddings (and the tied head) stay dense


def test_bad_configs_are_one_line_errors():
    for cfg, msg in ((PruneConfig(method="obs"), "unknown pruning method"),
                     (PruneConfig(sparsity=1.0), "must be in"),
                     (PruneConfig(layer_sparsity=[0.5, 0.5]), "gives 2 values for 4"),
                     (PruneConfig(structure="4:2"), "0 < N < M"),
                     (PruneConfig(structure="2:4", profile="owl"), "fixes the sparsity"),
                     (PruneConfig(method="magnitude", profile="owl"), "needs calibration")):
        with pytest.raises(HwnasUserError, match=msg):
            cfg.check(4)


@pytest.mark.parametrize("method,structure", [("sparsegpt", "unstructured"), ("wanda", "unstructured"),
                                              ("sparsegpt", "2:4")])
def test_calibrated_pruning_beats_magnitude_at_equal_sparsity(text_file, method, structure):
    pytest.importorskip("llmcompressor")
    base = make_tiny("llama", inter=128)
    with torch.no_grad():  # outlier features, as real LLMs have: what calibration-aware pruning weighs
        base.model.model.embed_tokens.weight[:, :6] *= 12
    sn = Supernet(base)
    sub = sn.parse_subnet({"layers": [0, 2, 3], "mlp_widths": [128, 64, 128]})  # a sliced, heterogeneous one
    ids = _ids(base.tokenizer, text_file)
    dense = sn.materialize(sub)
    errors = {}
    for m in ("magnitude", method):
        model = sn.materialize(sub)
        rec = prune(model, base.tokenizer, PruneConfig(method=m, sparsity=0.5, structure=structure, samples=8,
                                                       seq_len=64, data=str(text_file)))
        assert rec["achieved"]["overall"] == pytest.approx(0.5, abs=0.01)
        errors[m] = _error(dense, model, ids)
    assert errors[method] < 0.8 * errors["magnitude"], errors
    assert "save_pretrained" not in vars(model)  # llm-compressor's compressed-format writer is undone
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_owl_spreads_sparsity_over_layers_around_the_mean(text_file):
    pytest.importorskip("llmcompressor")
    base = make_tiny("llama", layers=4)
    model = Supernet(base).materialize(Supernet(base).full_subnet())
    rec = prune(model, base.tokenizer, PruneConfig(method="wanda", sparsity=0.5, profile="owl", owl_m=2,
                                                   samples=8, seq_len=64, data=str(text_file)))
    layers = rec["achieved"]["layers"]
    assert len(set(round(x, 2) for x in layers)) > 1 and sum(layers) / len(layers) == pytest.approx(0.5, abs=0.02)
    assert max(layers) - min(layers) == pytest.approx(2 * 0.08, abs=0.01)  # OWL's spread: 2 lambda


def test_cli_prune_writes_a_model_folder_and_deepsparse_keeps_its_zeros(tiny_model_dir, text_file, tmp_path, capsys):
    from hwnas_backends.deepsparse_backend import sparsify

    from hwnas.model import load_model

    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"layers": [0, 1, 3], "mlp_widths": [256, 128, 256]}))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--subnet", str(sub), "--method", "magnitude",
                 "--sparsity", "0.6", "--channel-order", "none", "--calibration-data", str(text_file),
                 "--out", str(out)]) == 0
    rec = json.loads((out / "hwnas_sparsity.json").read_text())
    assert rec["achieved"]["overall"] == pytest.approx(0.6, abs=0.01) and rec["subnet"]["layers"] == [0, 1, 3]
    loaded = load_model(str(out))
    assert achieved_sparsity(loaded.model)["overall"] == pytest.approx(0.6, abs=0.01)
    kept = sparsify(loaded.model, None)  # a pruned model: its zeros, not magnitude at 0.7
    assert kept["achieved_sparsity"]["overall"] == pytest.approx(0.6, abs=0.01) and "kept" in kept["pruning"]
    dense = make_tiny("llama").model
    assert sparsify(dense, None)["achieved_sparsity"]["overall"] == pytest.approx(0.7, abs=0.01)
    capsys.readouterr()
    assert main(["prune", "--model", str(tiny_model_dir), "--subnet", str(sub), "--layer-sparsity", "0.5,0.5",
                 "--method", "magnitude", "--out", str(tmp_path / "p2")]) == 2
    assert "gives 2 values for 3 layers" in capsys.readouterr().err and not (tmp_path / "p2").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("x")
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--out", str(mine)]) == 2
    assert (mine / "a.txt").read_text() == "x"

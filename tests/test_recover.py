"""Recovery distillation: the student moves toward the teacher, keeps its zeros, resumes exactly, and
comes out as a model folder the other commands take."""

import json

import pytest
import torch
from conftest import make_tiny

from hwnas.cli import main
from hwnas.errors import HwnasUserError
from hwnas.recover import RecoverConfig, recover, sparsity_masks, squarehead_loss, teacher_layers
from hwnas.supernet import Supernet

IDS = torch.randint(3, 128, (2, 32), generator=torch.Generator().manual_seed(5))


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "train.txt"
    p.write_text(" ".join(f"w{(i * 7) % 23}" for i in range(3000)))
    return p


def _student(sn, layers=(0, 1, 3), width=128):
    sub = sn.parse_subnet({"layers": list(layers), "mlp_widths": [width] * len(layers)})
    return sub, sn.materialize(sub)


def _kl_to_teacher(teacher, student, ids=IDS) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(ids).logits, -1)
        s = torch.log_softmax(student(ids).logits, -1)
    return torch.nn.functional.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True,
                                      reduction="batchmean").item()


def test_squarehead_is_zero_on_equal_states_and_scale_free():
    a = [torch.randn(2, 4, 8), torch.randn(2, 4, 8)]
    assert squarehead_loss(a, a).item() == 0.0
    b = [x + 0.1 * torch.randn_like(x) for x in a]
    assert squarehead_loss(b, a).item() == pytest.approx(squarehead_loss([10 * x for x in b], [10 * x for x in a]).item(),
                                                         rel=1e-5)


def test_recovery_brings_a_sliced_sparse_student_toward_the_teacher(text_file, tmp_path):
    base = make_tiny("llama")
    sn = Supernet(base)
    sub, student = _student(sn)
    with torch.no_grad():  # prune half of every decoder linear, so the masks must hold it there
        for mod in student.model.layers.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                w.masked_fill_(w.abs() <= w.abs().flatten().median(), 0.0)
    masks = sparsity_masks(student)
    assert len(masks) == 3 * 7
    ids = base.tokenizer(text_file.read_text()[:2000], return_tensors="pt")["input_ids"][:, :64]  # text it trains on
    before = _kl_to_teacher(base.model, student, ids)
    cfg = RecoverConfig(steps=12, batch_size=2, seq_len=32, lr=3e-3, warmup=1, data=str(text_file), save_every=5,
                        freeze_embeddings=False)
    out = recover(base.model, student, base.tokenizer, cfg, tmp_path / "rec", layer_map=list(sub.layers),
                  source={"teacher": {"spec": "tiny"}}, markers=lambda d: sn.write_markers(sub, student, d))
    after = _kl_to_teacher(base.model, student, ids)
    assert after < 0.7 * before, (before, after)
    for lin, keep in masks.items():  # every pruned weight is still exactly zero
        assert (lin.weight[~keep] == 0).all()
    log = [json.loads(x) for x in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13)) and log[-1]["loss"] < log[0]["loss"]
    assert {"loss_hidden", "loss_kd"} <= set(log[0])
    from hwnas.model import load_model

    back = load_model(str(out))  # a model folder every command takes as --model
    with torch.no_grad():
        assert torch.allclose(back.model(IDS).logits, student(IDS).logits, atol=1e-5)
    assert json.loads((out / "hwnas_subnet.json").read_text())["subnet"]["layers"] == [0, 1, 3]
    import yaml

    rec = yaml.safe_load((out / "hwnas_recover.yaml").read_text())
    assert rec["sparsity"]["after"] == pytest.approx(rec["sparsity"]["before"]) and rec["sparsity"]["before"] > 0.45
    assert not (out / "checkpoint").exists()


def test_interrupted_recovery_resumes_to_the_same_weights(text_file, tmp_path):
    cfg = RecoverConfig(steps=4, batch_size=2, seq_len=32, lr=3e-3, warmup=1, data=str(text_file), save_every=2,
                        freeze_embeddings=False)

    def run(out, progress=None):
        base = make_tiny("llama")
        sub, student = _student(Supernet(base))
        recover(base.model, student, base.tokenizer, cfg, out, layer_map=list(sub.layers), source={},
                progress=progress)
        return student

    straight = run(tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_at_3(step, total, rec):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "b", progress=stop_at_3)
    assert (tmp_path / "b" / "checkpoint" / "state.json").is_file()
    resumed = run(tmp_path / "b")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "loss_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the step after the checkpoint was logged once, not twice


def test_teacher_layers_need_a_subnet_marker_for_a_shallower_student(tmp_path):
    assert teacher_layers(None, 4, 4) == [0, 1, 2, 3]
    with pytest.raises(HwnasUserError, match="no hwnas_subnet.json"):
        teacher_layers(tmp_path, 3, 4)
    (tmp_path / "hwnas_subnet.json").write_text(json.dumps({"subnet": {"layers": [0, 2, 9]}}))
    with pytest.raises(HwnasUserError, match="not cut from this"):
        teacher_layers(tmp_path, 3, 4)


def test_cli_recovers_a_subnet_folder_and_refuses_foreign_folders(tiny_model_dir, text_file, tmp_path, capsys):
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"layers": [0, 2, 3], "mlp_widths": [128, 128, 256]}))
    cut = tmp_path / "cut"
    assert main(["subnet", "--model", str(tiny_model_dir), "--subnet", str(sub), "--out", str(cut),
                 "--channel-order", "none"]) == 0
    out = tmp_path / "rec"
    common = ["--model", str(tiny_model_dir), "--train-data", str(text_file), "--steps", "2", "--seq-len", "32",
              "--dtype", "fp32", "--channel-order", "none"]
    assert main(["recover", *common, "--student", str(cut), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "hwnas_subnet.json").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["recover", *common, "--subnet", str(sub), "--out", str(mine)]) == 2
    assert "refusing" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep me"
    assert main(["recover", *common, "--student", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2

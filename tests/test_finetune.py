"""InstaTune: sub-network views share and train the base weights; runs resume exactly."""

import pytest
import torch
from conftest import make_tiny

from hwnas.finetune import FinetuneConfig, activate, finetune, smallest_subnet
from hwnas.space import SearchSpace
from hwnas.supernet import Supernet

IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(2))
SPACE = SearchSpace.default_for(4, 256)


def test_activated_view_equals_materialized_subnet(tiny_llama):
    sn = Supernet(tiny_llama)
    s = sn.parse_subnet({"layers": [0, 2, 3], "mlp_widths": [64, 256, 128]})
    with torch.no_grad(), activate(tiny_llama.model, s):
        view = tiny_llama.model(IDS, use_cache=False).logits
    with torch.no_grad():
        mat = sn.materialize(s)(IDS).logits
        full = tiny_llama.model(IDS).logits  # restored after the block
        assert torch.allclose(view, mat, atol=1e-5)
        assert torch.allclose(full, sn.materialize(sn.full_subnet())(IDS).logits, atol=1e-6)


def test_view_gradients_reach_only_kept_channels(tiny_llama):
    sn = Supernet(tiny_llama)
    s = sn.parse_subnet({"layers": [1], "mlp_widths": [64]})
    with activate(tiny_llama.model, s):
        tiny_llama.model(IDS, labels=IDS, use_cache=False).loss.backward()
    layers = tiny_llama.model.model.layers
    g = layers[1].mlp.gate_proj.weight.grad
    assert g[:64].abs().sum() > 0 and g[64:].abs().sum() == 0
    assert layers[0].mlp.gate_proj.weight.grad is None


def test_smallest_subnet_drops_least_influential():
    s = smallest_subnet(SPACE, [0.5, 0.1, 0.9, 0.3])
    assert s.layers == (0, 2, 3) and set(s.mlp_widths) == {SPACE.mlp_widths[0]}


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "train.txt"  # a learnable sequence: a cycle of 20 words
    p.write_text(" ".join(f"w{i % 20}" for i in range(3000)))
    return p


@pytest.mark.parametrize("rule", ["alternate", "sandwich"])
def test_finetune_lowers_loss_and_writes_a_model_folder(text_file, tmp_path, rule):
    from transformers import AutoModelForCausalLM

    base = make_tiny("llama")
    sn = Supernet(base)
    cfg = FinetuneConfig(steps=6, batch_size=2, seq_len=32, lr=3e-3, warmup=1, rule=rule, data=str(text_file),
                         save_every=3, freeze_embeddings=False)
    out = finetune(sn, SPACE, cfg, tmp_path / "ft")
    import json

    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    full = [r["loss_full"] for r in log if "loss_full" in r]
    assert full[-1] < full[0]
    back = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(back(IDS).logits, base.model(IDS).logits, atol=1e-5)
    assert (out / "hwnas_order.json").is_file() and not (out / "checkpoint").exists()


def test_interrupted_run_resumes_to_the_same_weights(text_file, tmp_path):
    cfg = FinetuneConfig(steps=4, batch_size=2, seq_len=32, lr=3e-3, warmup=1, data=str(text_file), save_every=2,
                         freeze_embeddings=False)
    straight = make_tiny("llama")
    finetune(Supernet(straight), SPACE, cfg, tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_at_3(step, total, rec):
        if step == 3:
            raise Stop

    interrupted = make_tiny("llama")
    with pytest.raises(Stop):
        finetune(Supernet(interrupted), SPACE, cfg, tmp_path / "b", progress=stop_at_3)
    assert (tmp_path / "b" / "checkpoint" / "state.json").is_file()
    resumed = make_tiny("llama")  # a fresh process would reload the base
    finetune(Supernet(resumed), SPACE, cfg, tmp_path / "b")
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k

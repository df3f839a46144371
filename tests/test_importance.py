"""Importance ordering: function-preserving, most important channels first, cached, applied by default."""

import random

import pytest
import torch

from hwnas.importance import Calibration, compute_order, get_order, load_order, save_order, score_model
from hwnas.supernet import Supernet

IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def calib_file(tmp_path):
    rng = random.Random(0)
    p = tmp_path / "calib.txt"
    p.write_text(" ".join(f"w{rng.randrange(125)}" for _ in range(4000)))
    return p


@pytest.mark.parametrize("method", ["act", "contrib", "taylor"])
def test_order_puts_highest_scores_first_and_preserves_function(tiny_llama, calib_file, method):
    model = tiny_llama.model
    with torch.no_grad():
        ref = model(IDS).logits
    calib = Calibration(source=str(calib_file), num_sequences=8, seq_len=32)
    order = compute_order(tiny_llama, method, calib)
    assert len(order.layer_scores) == 4 and all(0 <= s <= 2 for s in order.layer_scores)
    Supernet(tiny_llama, order=order)  # applies the permutation in place
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, ref, atol=1e-5)
    from hwnas.importance import calibration_ids

    scores, _ = score_model(model, calibration_ids(tiny_llama.tokenizer, calib), method)
    for s in scores:  # re-scored after permutation: non-increasing (up to float noise)
        assert (s[1:] <= s[:-1] + 1e-4 * s.max()).all()


def test_order_file_round_trip_and_cache(tiny_llama, calib_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    calib = Calibration(source=str(calib_file), num_sequences=4, seq_len=32)
    order = get_order(tiny_llama, "act", calib)
    files = list((tmp_path / "cache" / "orders").glob("*.json"))
    assert len(files) == 1
    again = get_order(tiny_llama, "act", calib)  # from the cache
    assert again.mlp == order.mlp and again.layer_scores == pytest.approx(order.layer_scores)
    save_order(order, tmp_path / "o.json")
    assert load_order(tmp_path / "o.json").mlp == order.mlp


def test_short_calibration_text_is_a_clear_error(tiny_llama, tmp_path):
    from hwnas.errors import HwnasUserError

    p = tmp_path / "short.txt"
    p.write_text("w1 w2 w3")
    with pytest.raises(HwnasUserError, match="windows"):
        compute_order(tiny_llama, "act", Calibration(source=str(p), num_sequences=4, seq_len=32))


@pytest.mark.real_model
def test_ordering_beats_naive_slicing_on_smollm2(smollm2):
    from hwnas.evaluate.perplexity import load_text, perplexity, tokenize_text

    ids = tokenize_text(smollm2.tokenizer, load_text()[:200_000])
    sub = {"layers": list(range(30)), "mlp_widths": [1024] * 30}
    naive = Supernet(smollm2)
    ppl_naive = perplexity(naive.materialize(naive.parse_subnet(sub), share_weights=True), ids,
                           window=256, max_windows=2).ppl
    state = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    try:
        order = compute_order(smollm2, "contrib", Calibration(num_sequences=8, seq_len=128))
        ordered = Supernet(smollm2, order=order)
        ppl_ordered = perplexity(ordered.materialize(ordered.parse_subnet(sub), share_weights=True), ids,
                                 window=256, max_windows=2).ppl
    finally:
        smollm2.model.load_state_dict(state)  # the session fixture is shared
    assert ppl_ordered < 0.5 * ppl_naive

"""Accuracy evaluation: lm-eval prompt formats on the real files, packed scoring == one forward per
choice, seeded (stratified) subsampling, perplexity, the `hwnas eval` command."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from hwnas.cli import main
from hwnas.errors import DataNotFoundError, HwnasUserError
from hwnas.evaluate import TASKS, Evaluator
from hwnas.evaluate.perplexity import perplexity
from hwnas.evaluate.scoring import Scorer, TokRequest, encode_requests, naive_loglikelihoods
from hwnas.evaluate.tasks import get_task, subsample

# The first row of each file as lm-eval 0.4 formats it (context of choice 0, continuation of choice 0).
FIRST_ROW = {
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food "
                 "webs?\nAnswer:", " Sunlight is the source of energy for nearly all ecosystems."),
    "winogrande": ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
    "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
             " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
             "you will also need to supply it with a water bottle and a food dish."),
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. he", " is using wrap to wrap a pair of skis."),
    "mmlu": ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
             "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
             "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:", " A"),
}


@pytest.mark.parametrize("task", sorted(FIRST_ROW))
def test_prompt_format_matches_lm_eval(task):
    doc = TASKS[task].load_docs()[0]
    assert (doc.contexts[0], doc.continuations[0]) == FIRST_ROW[task]


def test_task_shapes_on_real_files():
    tqa = TASKS["truthfulqa_mc1"].load_docs()
    assert len(tqa) == 817 and all(d.gold == 0 for d in tqa)
    assert tqa[0].contexts[0].startswith("Q: What is human life expectancy in the United States?\n")
    assert tqa[0].contexts[0].endswith("\n\nQ: What is the smallest country in the world that is at least "
                                       "one square mile in area?\nA:")
    lam = TASKS["lambada_openai"].load_docs()
    assert len(lam) == 5153 and lam[0].continuations == (" signs",)
    assert len(TASKS["hellaswag"].load_docs()) == 10042
    mmlu = TASKS["mmlu"].load_docs()
    assert len(mmlu) == 14079 and len({d.group for d in mmlu}) == 57
    wino = TASKS["winogrande"].load_docs()[0]
    assert wino.continuations[0] == wino.continuations[1] and wino.contexts[0] != wino.contexts[1]
    for name in ("arc_challenge", "hellaswag"):
        assert TASKS[name].metric == "acc_norm"
    assert TASKS["wikitext2"].metric == "ppl" and not TASKS["wikitext2"].higher_is_better


def test_subsample_is_seeded_and_stratified():
    docs = TASKS["mmlu"].load_docs()
    a, b = subsample(docs, 200, seed=0), subsample(docs, 200, seed=0)
    assert [d.index for d in a] == [d.index for d in b] and len(a) == 200
    assert [d.index for d in subsample(docs, 200, seed=1)] != [d.index for d in a]
    per = {}
    for d in a:
        per[d.group] = per.get(d.group, 0) + 1
    total = {}
    for d in docs:
        total[d.group] = total.get(d.group, 0) + 1
    for g, n in total.items():  # largest-remainder allocation: within one of the exact share
        assert abs(per.get(g, 0) - 200 * n / len(docs)) < 1
    assert len(subsample(docs[:10], 50)) == 10


def test_missing_data_and_unknown_task(tmp_path):
    with pytest.raises(DataNotFoundError, match="llm_foundry_eval/arc_easy.jsonl"):
        TASKS["arc_easy"].load_docs(tmp_path)
    with pytest.raises(HwnasUserError, match="unknown task"):
        get_task("arc_medium")
    with pytest.raises(DataNotFoundError, match="nothere.txt"):
        Evaluator(None, [f"text:{tmp_path / 'nothere.txt'}"])


def _requests(tok, n_items=6):
    """Items shaped like the real tasks: shared context + choices, partial scoring, long shared prefix."""
    primer = " ".join(f"w{i}" for i in range(20, 40))
    items = []
    for k in range(n_items):
        ctx = f"{primer} w{k} w{k + 1} w{k + 2}"
        items.append([(ctx, f" w{k + j} w{60 + j}" + " w7" * j) for j in range(4)])
        items.append([(f"{primer} w{k} w9", " w50 w51"), (f"{primer} w{k} w10", " w50 w51")])
    flat = encode_requests(tok, [p for it in items for p in it])
    out, at = [], 0
    for it in items:
        out.append(flat[at : at + len(it)])
        at += len(it)
    return out


@pytest.mark.parametrize("pack_tokens", [16, 64, 1024])
def test_packed_scoring_equals_one_forward_per_choice(tiny_llama, pack_tokens):
    items = _requests(tiny_llama.tokenizer)
    scorer = Scorer(items, pack_tokens=pack_tokens)
    assert scorer.prefix_len == 20  # the primer is encoded once for the whole task
    got = [x for it in scorer.run(tiny_llama.model) for x in it]
    ref = naive_loglikelihoods(tiny_llama.model, [r for it in items for r in it])
    assert [g.tokens for g in got] == [r.tokens for r in ref]
    assert max(abs(g.ll - r.ll) for g, r in zip(got, ref)) < 1e-4
    assert [g.greedy for g in got] == [r.greedy for r in ref]
    # fewer input tokens than one sequence per choice
    assert sum(len(p.tokens) for p in scorer.packs) < sum(len(r.context) + len(r.continuation) for it in items
                                                         for r in it)


def test_scoring_without_shared_prefix_and_hetero_model(tiny_llama):
    from hwnas.supernet import Supernet

    sn = Supernet(tiny_llama)
    model = sn.materialize(sn.parse_subnet({"layers": [0, 2, 3], "mlp_widths": [64, 256, 128]}),
                           share_weights=True)
    items = [[TokRequest((5, 6, 7), (8, 9)), TokRequest((5, 6, 7), (10,))], [TokRequest((11,), (12, 13))]]
    got = [x for it in Scorer(items).run(model) for x in it]
    ref = naive_loglikelihoods(model, [r for it in items for r in it])
    assert max(abs(g.ll - r.ll) for g, r in zip(got, ref)) < 1e-4


def test_encode_requests_moves_trailing_space(tiny_llama):
    tok = tiny_llama.tokenizer
    r = encode_requests(tok, [("w1 w2 ", "w3"), ("w1 w2", " w3")])
    assert r[0] == r[1] == TokRequest(tuple(tok("w1 w2")["input_ids"]), tuple(tok("w3")["input_ids"]))


@pytest.mark.parametrize("stride", [None, 24])
def test_perplexity_matches_full_logits(tiny_llama, stride):
    ids = torch.randint(3, 128, (200,))
    r = perplexity(tiny_llama.model, ids, window=64, stride=stride, max_windows=None)
    # reference: every token after the first scored once, with its own window's context
    window, step = 64, stride or 64
    nll, n, scored_to = 0.0, 0, 0
    for s in range(0, 200 - window + 1, step):
        logits = tiny_llama.model(ids[None, s : s + window]).logits[0].float()
        for p in range(window - 1):
            t = s + p + 1
            if t > scored_to:
                nll -= torch.log_softmax(logits[p], -1)[ids[t]].item()
                n += 1
                scored_to = t
    assert r.tokens == n
    assert math.isclose(r.ppl, math.exp(nll / n), rel_tol=1e-4)


def test_evaluator_on_tiny_model_every_task(tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 50}" for i in range(300)))
    names = list(TASKS) + [f"text:{text}"]
    ev = Evaluator(tiny_llama.tokenizer, names, limit=3, seed=0, ppl_windows=2, ppl_window=64)
    res = ev.evaluate(tiny_llama.model)
    assert list(res.tasks) == names
    for name, tr in res.tasks.items():
        spec = get_task(name)
        assert tr.metric == spec.metric and res.objective(name) == getattr(tr, spec.metric)
        if spec.kind == "perplexity":
            assert tr.ppl > 1 and tr.tokens > 0 and tr.window == 64
            continue
        assert tr.n == len(tr.items) == 3 and 0 <= tr.acc <= 1
        assert (tr.acc_norm is None) == ("acc_norm" not in spec.metrics)
    assert json.loads(json.dumps(res.to_dict()))["version"] == 1
    again = ev.evaluate(tiny_llama.model, tasks=["arc_easy", "winogrande"])
    assert list(again.tasks) == ["arc_easy", "winogrande"]
    assert again.agreement(res) == {"arc_easy": 1.0, "winogrande": 1.0}
    tr = res.tasks["piqa"]  # the tiny tokenizer maps real text to <unk>: every choice ties, pred 0
    flipped = dataclasses.replace(tr, items=(dataclasses.replace(tr.items[0], pred=1),) + tr.items[1:])
    other = dataclasses.replace(res, tasks={**res.tasks, "piqa": flipped})
    agree = other.agreement(res)
    assert set(agree) == {n for n in names if get_task(n).kind != "perplexity"}
    assert agree["piqa"] == pytest.approx(2 / 3) and agree["arc_easy"] == 1.0
    with pytest.raises(HwnasUserError, match="not prepared"):
        ev.evaluate(tiny_llama.model, tasks=["piqa_x"])


def test_cli_eval_json(tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "arc_easy,winogrande,wikitext2",
                 "--limit", "2", "--ppl-windows", "1", "--ppl-window", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["tasks"]) == {"arc_easy", "winogrande", "wikitext2"} and out["seconds"] > 0
    assert {"acc", "acc_norm", "stderr", "n"} <= set(out["tasks"]["arc_easy"])
    assert {"ppl", "tokens"} <= set(out["tasks"]["wikitext2"])
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "nope"]) == 2


@pytest.mark.real_model
def test_real_model_packed_equals_naive(smollm2):
    """SmolLM2-135M: packed scoring agrees with one forward per choice on real items (2 per task)."""
    ev = Evaluator(smollm2.tokenizer, ["arc_challenge", "winogrande", "truthfulqa_mc1"], limit=2, seed=0)
    for prepared in ev.tasks.values():
        reqs = [r for it in prepared.scorer.items for r in it]
        got = [x for it in prepared.scorer.run(smollm2.model) for x in it]
        ref = naive_loglikelihoods(smollm2.model, reqs)
        assert max(abs(g.ll - r.ll) for g, r in zip(got, ref)) < 1e-3
    assert ev.tasks["truthfulqa_mc1"].scorer.prefix_len > 150  # the 6-shot primer is cached


@pytest.mark.real_model
def test_real_tokenization_boundary(smollm2):
    """lm-eval's split: the space belongs to the continuation, context tokens are the context alone."""
    tok = smollm2.tokenizer
    (r,) = encode_requests(tok, [("Question: What is the capital of France?\nAnswer:", " Paris")])
    assert tok.decode(list(r.continuation)) == " Paris"
    assert list(r.context) == tok("Question: What is the capital of France?\nAnswer:")["input_ids"]


@pytest.mark.slow
@pytest.mark.real_model
def test_real_model_all_tasks_limit_20(smollm2):
    ev = Evaluator(smollm2.tokenizer, list(TASKS), limit=20, seed=0, ppl_windows=2)
    res = ev.evaluate(smollm2.model)
    for name, prepared in ev.tasks.items():
        if prepared.scorer is None:
            assert 5 < res.tasks[name].ppl < 100
            continue
        reqs = [r for it in prepared.scorer.items for r in it]
        ref = naive_loglikelihoods(smollm2.model, reqs)
        got = [x for it in prepared.scorer.run(smollm2.model) for x in it]
        assert max(abs(g.ll - r.ll) for g, r in zip(got, ref)) < 1e-3, name


@pytest.mark.parametrize("fmt", ["onnx", "gguf"])
def test_an_artifact_scores_through_its_runtime_as_torch_does(tmp_path, monkeypatch, fmt):
    """`hwnas eval --model ARTIFACT`: every log-likelihood from the artifact's runtime (token by
    token through its cache, the context prefilled once per item) equals the torch sub-network's
    within float noise, for multiple choice and perplexity alike."""
    import importlib.util

    from conftest import make_tiny

    from hwnas.evaluate.artifact import ArtifactModel
    from hwnas.export import export
    from hwnas.supernet import Supernet

    need = {"onnx": "onnxruntime", "gguf": "llama_cpp"}[fmt]
    if importlib.util.find_spec(need) is None:
        pytest.skip(f"needs {need}")
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    if fmt == "gguf":  # llama.cpp needs a byte-level BPE vocabulary
        from test_gguf import tiny

        sn = Supernet(tiny("llama"))
        s = sn.full_subnet()
    else:
        sn = Supernet(make_tiny("llama", seed=3))
        s = sn.parse_subnet({"layers": [0, 2, 3], "mlp_widths": [256, 128, 192]})
    export(sn, s, fmt, tmp_path / "art", measure=False)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 50}" for i in range(300)))
    names = ["arc_easy", "hellaswag", "lambada_openai", f"text:{text}"]
    ev = Evaluator(sn.base.tokenizer, names, limit=3, seed=0, ppl_windows=2, ppl_window=48, ppl_stride=32)
    ref = ev.evaluate(sn.materialize(s, share_weights=True))
    art = ArtifactModel(tmp_path / "art")
    got = ev.evaluate(art)
    assert art.steps > 0 and list(got.tasks) == names
    for name in names:
        a, b = ref.tasks[name], got.tasks[name]
        if a.ppl is not None:
            assert b.ppl == pytest.approx(a.ppl, rel=2e-3) and b.tokens == a.tokens
        for x, y in zip(a.items, b.items):
            assert np.allclose(x.lls, y.lls, atol=2e-3), (name, x.lls, y.lls)
        assert b.acc == a.acc and b.acc_norm == a.acc_norm
    if fmt == "onnx":  # the command line: the same scores, and where they came from
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["eval", "--model", str(tmp_path / "art"), "--tasks", f"text:{text}", "--ppl-windows", "2",
                         "--ppl-window", "48", "--ppl-stride", "32", "--json"]) == 0
        doc = json.loads(buf.getvalue())
        assert doc["artifact"]["format"] == "onnx" and doc["artifact"]["runtime"] == "onnxruntime"
        assert doc["tasks"][f"text:{text}"]["ppl"] == pytest.approx(ref.tasks[f"text:{text}"].ppl, rel=2e-3)
        assert main(["eval", "--model", str(tmp_path / "art"), "--subnet", str(text)]) == 2  # one line, exit 2

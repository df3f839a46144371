"""LINAS search plumbing on a tiny model with a real (perplexity) evaluator."""

import json

import numpy as np
import pytest

from hwnas.errors import HwnasUserError
from hwnas.evaluate.evaluator import Evaluator
from hwnas.search import Encoding, LinasConfig, Objective, ResultsStore, RunConfig, Search
from hwnas.space import SearchSpace
from hwnas.supernet import Supernet

SPACE = SearchSpace.from_dict({"base": {"num_layers": 4, "intermediate_size": 256}, "layers": {"min_depth": 2},
                               "mlp": {"widths": [64, 128, 192, 256]}})


@pytest.fixture
def text_task(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text(" ".join(f"w{(i * 7) % 23}" for i in range(4000)))
    return f"text:{p}"


def make_search(tiny_llama, tmp_path, text_task, name="run", algorithm="linas", progress=None, **linas):
    lc = LinasConfig(**{"initial": 8, "rounds": 2, "per_round": 4, "inner_evaluations": 400, "population": 20,
                        **linas})
    cfg = RunConfig(model="tiny", objectives=[Objective(f"{text_task}.ppl"), Objective("params")], tasks=[text_task],
                    linas=lc, algorithm=algorithm, seed=1)
    sn = Supernet(tiny_llama)
    space_file = tmp_path / "space.yaml"
    SPACE.save(space_file)
    cfg.space = str(space_file)
    ev = Evaluator(tiny_llama.tokenizer, [text_task], ppl_windows=2, ppl_window=64)
    return Search(cfg, tmp_path / name, supernet=sn, evaluator=ev, progress=progress)


def test_encoding_round_trip_and_repair():
    enc = Encoding(SPACE, layer_scores=[0.9, 0.1, 0.5, 0.2])
    x = np.array([[0, 0, 0, 0, 3, 2, 1, 0]])  # all layers dropped -> repaired to min depth 2
    s = enc.decode(x)[0]
    assert s.layers == (0, 2) and s.mlp_widths == (256, 128)  # most influential re-added
    assert enc.decode(enc.encode(s))[0] == s  # widths of dropped layers do not matter
    feats = enc.features(enc.repair(x))
    from hwnas.predictors import subnet_features

    assert np.allclose(feats, subnet_features([s], SPACE))


def test_random_candidates_cover_every_depth(tiny_llama, tmp_path, text_task):
    """Round 0 / the random baseline sample the space uniformly in depth (uniform genes + repair
    gave almost only the minimum depth)."""
    import random

    search = make_search(tiny_llama, tmp_path, text_task)
    subs = search.random_new(40, random.Random(0), set())
    depths = [s.depth for s in subs]
    assert len(subs) == 40 and len({s.key() for s in subs}) == 40
    assert set(depths) == set(SPACE.allowed_depths) and min(depths.count(d) for d in set(depths)) >= 5
    assert all(search.encoding.decode(search.encoding.encode(s))[0] == s for s in subs)


def test_linas_runs_dedups_and_records_named_fields(tiny_llama, tmp_path, text_task):
    search = make_search(tiny_llama, tmp_path, text_task)
    res = search.run()
    keys = [json.dumps(r["subnet"], sort_keys=True) for r in res.records]
    assert len(keys) == len(set(keys)) == 17  # 16 + the base model
    rec = res.records[-1]
    for field in ("subnet", "metrics", "costs", "latency_predicted", "round", "seeds", "versions", "timestamp",
                  "predicted"):
        assert field in rec
    assert rec["round"] == 2
    assert sum(bool(r["predicted"]) for r in res.records if r["round"] >= 1) >= 4  # predictor-driven picks
    assert res.front and (tmp_path / "run" / "front.json").is_file()
    assert sorted((tmp_path / "run" / "rounds").glob("round_*.json"))


def test_killed_search_resumes_without_losing_or_repeating(tiny_llama, tmp_path, text_task):
    class Kill(Exception):
        pass

    def kill_at(n):
        def progress(state):
            if state["evaluations"] == n:
                raise Kill
        return progress

    for n in (3, 9, 13):
        with pytest.raises(Kill):
            make_search(tiny_llama, tmp_path, text_task, name="k", progress=kill_at(n)).run()
    make_search(tiny_llama, tmp_path, text_task, name="k").run()
    lines = (tmp_path / "k" / "evaluations.jsonl").read_text().splitlines()
    subnets = [json.dumps(json.loads(line)["subnet"], sort_keys=True) for line in lines]
    assert len(subnets) == len(set(subnets)) == 17
    straight = make_search(tiny_llama, tmp_path, text_task, name="s").run()
    assert sorted(subnets) == sorted(json.dumps(r["subnet"], sort_keys=True) for r in straight.records)


@pytest.mark.parametrize("algorithm", ["nsga2", "random"])
def test_baselines_spend_the_same_budget(tiny_llama, tmp_path, text_task, algorithm):
    res = make_search(tiny_llama, tmp_path, text_task, name=algorithm, algorithm=algorithm).run()
    assert len(res.records) == 17 and sum(r["is_base"] for r in res.records) == 1


def test_store_skips_a_line_cut_by_a_kill(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text('{"subnet": {"layers": [0], "mlp_widths": [64]}, "round": 0}\n{"subnet": {"lay')
    assert len(ResultsStore(p)) == 1


def test_config_validation(tmp_path):
    with pytest.raises(HwnasUserError, match="at least two"):
        RunConfig.from_dict({"objectives": [{"metric": "wikitext2.ppl"}]})
    with pytest.raises(HwnasUserError, match="needs task"):
        RunConfig.from_dict({"objectives": ["arc_easy.acc", "params"]})
    with pytest.raises(HwnasUserError, match="latency_model"):
        RunConfig.from_dict({"objectives": ["wikitext2.ppl", "decode_ms_per_token"]})
    with pytest.raises(HwnasUserError, match="unknown keys"):
        RunConfig.from_dict({"objective": []})


def test_report_writes_plots_table_and_picks(tiny_llama, tmp_path, text_task):
    from hwnas.report import Run, pick, write_report

    make_search(tiny_llama, tmp_path, text_task, name="r").run()
    files = write_report(tmp_path / "r")
    assert any(f.suffix == ".png" for f in files) and (tmp_path / "r" / "report" / "front.md").is_file()
    assert "base" in (tmp_path / "r" / "report" / "front.md").read_text()
    run = Run.load(tmp_path / "r")
    metric = f"{text_task}.ppl"
    rec = pick(run, ["params<=0.8*base", f"{metric}<=base*100"], metric)
    assert rec["costs"]["params"] <= 0.8 * run.base["costs"]["params"]
    with pytest.raises(HwnasUserError, match="no evaluated"):
        pick(run, ["params<=0.01*base"], metric)
    with pytest.raises(HwnasUserError, match="cannot read"):
        pick(run, ["params<=__import__('os')"], metric)


def test_measured_front_is_merged_plotted_and_pickable(tiny_llama, tmp_path, text_task, monkeypatch):
    """`report --measure-front`: measurements land in measured.jsonl (resumable), merge into the
    records on load, show in the table, and `measured.<metric>` rules pick on them."""
    import hwnas.bench
    from hwnas.bench import BenchResult
    from hwnas.report import MEASURED, Run, measure_front, pick, write_report

    make_search(tiny_llama, tmp_path, text_task, name="m").run()
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "latency_model.yaml").write_text("backend: torch\n")
    calls = []

    def fake_bench(model, subnet, backend, **kw):  # decode time grows with parameters kept
        calls.append((model, backend, kw["prefill"], kw["decode"]))
        n = 1.0 if subnet is None else sum(subnet["mlp_widths"]) / (4 * 256)
        return BenchResult(backend=backend, prefill_ms=100 * n, decode_ms_per_token=10 * n, peak_mem_mb=50.0,
                           repeats=5, cv_prefill=0.01, cv_decode=0.01, device="cpu", prefill_p90_ms=0,
                           decode_p90_ms=0, prefill_tokens=kw["prefill"], decode_tokens=kw["decode"], batch=1,
                           threads=1, load=0.0, flagged=False, subnet=subnet, versions={})

    monkeypatch.setattr(hwnas.bench, "bench_subnet", fake_bench)
    run = Run.load(tmp_path / "m")
    run.config.latency_model = str(lm)
    n = measure_front(run, rounds=2)
    distinct = len({json.dumps(r["subnet"], sort_keys=True) for r in [run.base, *run.front()]})
    assert n == 2 * distinct
    assert calls[0][1:] == ("torch", 128, 32)
    assert measure_front(run, rounds=2) == 0  # resumable: nothing measured twice
    lines = [json.loads(x) for x in (tmp_path / "m" / MEASURED).read_text().splitlines()]
    assert len(lines) == n and sorted({x["round"] for x in lines}) == [0, 1]
    # interleaved: every sub-network's first round comes before any second round
    assert all(x["round"] == 0 for x in lines[:distinct]) and all(x["round"] == 1 for x in lines[distinct:])
    again = Run.load(tmp_path / "m")
    measured = [r for r in again.records if r.get("latency_measured")]
    assert len(measured) == distinct and again.base["latency_measured"]["decode_ms_per_token"] == 10.0
    for r in measured:  # the speed-up over the base of the same rounds (fake_bench: base / this one)
        if not r.get("is_base"):
            want = 10.0 / r["latency_measured"]["decode_ms_per_token"]
            assert r["measured_speedup"]["decode_ms_per_token"]["median"] == pytest.approx(want, rel=1e-3)
    rec = pick(again, ["measured.decode_ms_per_token<=0.99*base"], "measured.decode_ms_per_token")
    assert rec in measured and not rec.get("is_base")
    write_report(tmp_path / "m")
    front_md = (tmp_path / "m" / "report" / "front.md").read_text()
    assert "measured decode_ms_per_token" in front_md and "speed-up vs base (rounds)" in front_md


@pytest.mark.slow
def test_demo_pipeline_end_to_end_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    """The README's demo command, on a tiny model (minutes: every stage exports real graphs)."""
    from conftest import make_tiny

    from hwnas.cli import main

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    tiny = make_tiny("llama", layers=6, inter=512)
    tiny.model.save_pretrained(tmp_path / "tiny")
    tiny.tokenizer.save_pretrained(tmp_path / "tiny")
    assert main(["demo", "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "demo"),
                 "--latency-samples", "6", "--evaluations", "12"]) == 0
    out = capsys.readouterr().out
    assert "chosen onnx " in out and "against the baselines" in out
    m = json.loads((tmp_path / "demo" / "artifacts" / "onnx" / "manifest.json").read_text())
    assert m["subnet"] == json.loads((tmp_path / "demo" / "chosen_subnet.json").read_text())
    res = json.loads((tmp_path / "demo" / "baselines" / "baselines.json").read_text())
    assert {p["kind"] for p in res["points"]} == {"base", "uniform-width", "layer-drop", "compare", "twin"}
    assert {p["format"] for p in res["points"]} == {"onnx", "onnx-int8"}


@pytest.mark.parametrize("algorithm", ["linas", "nsga2"])
def test_budget_constrains_the_front(tiny_llama, tmp_path, text_task, algorithm):
    search = make_search(tiny_llama, tmp_path, text_task, name=f"b-{algorithm}", algorithm=algorithm)
    bound = 0.8 * search.costs.of_subnet(search.sn.full_subnet())["params"]
    search.cfg.budgets = {"params": bound}
    res = search.run()
    assert res.front and all(res.records[i]["costs"]["params"] <= bound for i in res.front)
    assert not search.feasible([r for r in res.records if r["is_base"]]).any()

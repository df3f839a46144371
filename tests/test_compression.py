"""Weight formats in the joint space: records, genes, simulation against the library's own numbers,
per-block export, per-format lookup-table rows."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from hwnas.compression import Compression, CompressionError, block_of, simulate
from hwnas.errors import SpaceError, SubnetError
from hwnas.search import Encoding
from hwnas.space import SearchSpace
from hwnas.subnet import Subnet
from hwnas.supernet import Supernet

SPACE = SearchSpace.from_dict({"base": {"num_layers": 4, "intermediate_size": 256}, "layers": {"min_depth": 2},
                               "mlp": {"widths": [64, 128, 256]},
                               "compression": {"formats": ["fp32", "int8"], "per": "block"}})


def test_subnet_records_round_trip_and_old_keys_stay():
    s = Subnet((0, 2), (64, 256))
    c = s.compressed(Compression(("int8", "fp32"), ("int8", "int8"), "fp32", "int8"))
    assert Subnet.from_dict(c.to_dict()) == c and c.architecture == s
    # an all-fp32 compression is the uncompressed sub-network: same key as before formats existed
    assert s.compressed(Compression.uniform("fp32", 2)).key() == s.key() == '{"layers":[0,2],"mlp_widths":[64,256]}'
    parsed = Subnet.parse(c.to_dict(), num_layers=4, intermediate_size=256, space=SPACE)
    assert parsed == c
    with pytest.raises(SubnetError, match="has 1 entries"):
        Subnet.parse({**s.to_dict(), "compression": {"attn": ["int8"]}}, num_layers=4, intermediate_size=256)
    plain_space = dataclasses.replace(SPACE, weight_formats=("fp32",))
    with pytest.raises(SubnetError, match="not in the space's compression formats"):
        Subnet.parse(c.to_dict(), num_layers=4, intermediate_size=256, space=plain_space)


def test_space_section_sizes_and_samples():
    assert SPACE.compressed and SPACE.format_genes() == (2, 2)
    # per kept layer: 3 widths x 2 attention x 2 MLP formats; then 2 x 2 for embedding and head
    assert SPACE.distinct_subnets == sum(math.comb(4, 4 - d) * 12**d for d in (2, 3, 4)) * 4
    assert SPACE.distinct_architectures == sum(math.comb(4, 4 - d) * 3**d for d in (2, 3, 4))
    s = SPACE.sample(random.Random(1))
    assert len(s["compression"]["attn"]) == len(s["layers"])
    assert SearchSpace.from_dict(SPACE.to_dict()) == SPACE
    with pytest.raises(SpaceError, match="unknown weight format"):
        SearchSpace.from_dict({**SPACE.to_dict(), "compression": {"formats": ["fp32", "int9x"]}})
    with pytest.raises(SpaceError, match="compression.per"):
        SearchSpace.from_dict({**SPACE.to_dict(), "compression": {"formats": ["fp32", "int8"], "per": "row"}})


@pytest.mark.parametrize("per", ["block", "layer", "network"])
def test_encoding_carries_formats(per):
    space = dataclasses.replace(SPACE, compression_per=per)
    enc = Encoding(space)
    rng = np.random.default_rng(0)
    x = enc.repair(rng.integers(0, enc.xu + 1, size=(16, enc.n_genes)))
    subs = enc.decode(x)
    assert any(s.compression is not None for s in subs)
    for s in subs:
        assert enc.decode(enc.encode(s))[0] == s
        if per == "network" and s.compression is not None:
            assert len(set(s.compression.formats())) == 1
        if per == "layer" and s.compression is not None:
            assert s.compression.attn == s.compression.mlp
    from hwnas.predictors import subnet_features

    assert np.allclose(enc.features(x), subnet_features(subs, space))


def test_block_names_of_composed_and_dynamo_graphs():
    assert block_of("layer3/attn.attn.q_proj.weight.T") == ("attn", 3)
    assert block_of("layer0/mlp.down.weight.T") == ("mlp", 0)
    assert block_of("model.layers.12.mlp.up_proj.weight") == ("mlp", 12)
    assert block_of("model.layers.2.self_attn.o_proj.weight") == ("attn", 2)
    assert block_of("embed/embed.weight") == ("embed", None)
    assert block_of("final/lm_head.weight.T") == ("head", None)
    assert block_of("layer0/attn.norm.weight") == ("attn", 0)  # norms are never quantized (not MatMul weights)
    assert block_of("final/norm.weight") is None


def test_simulation_does_not_touch_shared_weights(tiny_llama):
    from hwnas_backends.onnxruntime_backend import INT8

    sn = Supernet(tiny_llama)
    before = {k: v.clone() for k, v in sn.model.state_dict().items()}
    s = sn.full_subnet()
    m = simulate(sn.materialize(s, share_weights=True), Compression.uniform("int8", s.depth), {"int8": INT8})
    assert all(torch.equal(before[k], v) for k, v in sn.model.state_dict().items())
    assert m.lm_head.weight is not m.model.embed_tokens.weight  # table and head quantized apart
    with pytest.raises(CompressionError, match="does not run"):
        simulate(sn.materialize(s, share_weights=True), Compression.uniform("int4", s.depth), {"int8": INT8})


@pytest.mark.skipif(not __import__("importlib").util.find_spec("onnxruntime"), reason="needs onnxruntime")
def test_simulated_weights_equal_quantize_dynamic_and_the_plan_is_followed(tiny_llama, tmp_path, monkeypatch):
    """Every int8 weight the torch simulation uses is the one ORT's quantize_dynamic stores (value for
    value), and only the blocks the plan names are quantized."""
    import onnx
    from hwnas_backends.onnxruntime_backend import INT8, OnnxRuntimeBackend
    from onnx import numpy_helper

    from hwnas.measure.graphs import build_module

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    sn = Supernet(tiny_llama)
    s = Subnet((0, 1, 3), (256, 128, 64))
    comp = Compression(("int8", "fp32", "int8"), ("fp32", "int8", "int8"), "int8", "int8")
    module, io = build_module(sn.materialize(s, share_weights=True), "model", weights=comp)
    OnnxRuntimeBackend.convert(module, io, tmp_path / "g", OnnxRuntimeBackend.CONFIG())
    inits = {i.name: i for i in onnx.load(str(tmp_path / "g" / "graph.onnx")).graph.initializer}
    quantized = {n[: -len("_quantized")] for n in inits if n.endswith("_quantized")}
    expect = {"embed/embed.weight", "final/lm_head.weight.T"}
    names = {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate", "up", "down")}
    for j in range(3):
        for block in ("attn", "mlp"):
            if comp.format_of(block, j) == "int8":
                prefix = f"layer{j}/attn.attn." if block == "attn" else f"layer{j}/mlp."
                expect |= {f"{prefix}{p}.weight.T" for p in names[block]}
    assert quantized == expect
    sim = simulate(sn.materialize(s, share_weights=True), comp, {"int8": INT8})

    def deq(name):
        q, sc, zp = (numpy_helper.to_array(inits[f"{name}{x}"]).astype(np.float32)
                     for x in ("_quantized", "_scale", "_zero_point"))
        return (q - zp) * sc

    assert np.array_equal(deq("embed/embed.weight"), sim.model.embed_tokens.weight.numpy())
    assert np.array_equal(deq("final/lm_head.weight.T").T, sim.lm_head.weight.numpy())
    assert np.array_equal(deq("layer2/mlp.down.weight.T").T, sim.model.layers[2].mlp.down_proj.weight.numpy())
    assert np.array_equal(deq("layer0/attn.attn.k_proj.weight.T").T,
                          sim.model.layers[0].self_attn.k_proj.weight.numpy())


@pytest.mark.skipif(not __import__("importlib").util.find_spec("onnxruntime"), reason="needs onnxruntime")
def test_export_writes_and_verifies_per_block_formats(tiny_llama, tmp_path, monkeypatch):
    from hwnas.export import ExportError, export, verify

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    sn = Supernet(tiny_llama)
    s = Subnet((0, 2, 3), (256, 128, 64), Compression(("int8", "fp32", "int8"), ("int8",) * 3, "fp32", "int8"))
    m = export(sn, s, "onnx", tmp_path / "a", measure=False)
    assert m["compression"] == s.compression.to_dict() and m["subnet"]["compression"]
    v = m["verification"]
    assert v["against"].startswith("torch simulation") and v["cosine"] > 0.999 and v["top1_agreement"] >= 0.95
    assert "vs_fp32" in v and verify(tmp_path / "a")["ok"]
    with pytest.raises(ExportError, match="--format onnx"):
        export(sn, s, "onnx-int8", tmp_path / "b", measure=False)
    with pytest.raises(ExportError, match="per-block weight formats"):
        export(sn, s, "openvino", tmp_path / "c", measure=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_latency_features_use_each_blocks_format_rows():
    from conftest import make_tiny

    from hwnas.latency import FeatureBuilder, LatencyModelError, Shape, subnet_arrays
    from hwnas.profile import DeviceProfile

    config = make_tiny("llama").model.config
    rows = []
    for fmt, scale in (("fp32", 1.0), ("int8", 0.5)):
        for op, width in (("attention", 0), ("head", 0), ("mlp", 64), ("mlp", 256)):
            rows.append({"op": op, "width": width, "phase": "decode", "tokens": 1, "context": 0, "batch": 1,
                         "format": fmt, "median_ms": scale * (2.0 if op == "head" else 1.0 + width / 256),
                         "p90_ms": 1, "cv": 0, "cv_raw": 0, "repeats": 1, "peak_mem_mb": 1, "flagged": False,
                         "load": 0, "threads": 1})
    prof = DeviceProfile({"version": 1, "backend": "x", "model": "tiny"}, rows)
    fb = FeatureBuilder(prof, Shape.of(config), [64, 256])
    a = Subnet((0, 1), (64, 256))
    b = a.compressed(Compression(("int8", "fp32"), ("fp32", "int8"), "fp32", "int8"))
    keep, widths, formats = subnet_arrays([a, b], 4, with_formats=True)
    f = fb.build(keep, widths, "decode", 1, 0, 1, formats=formats)
    assert f[0, 0] == pytest.approx(1 + 1 + 1.25 + 2.0 + 2.0)  # attention x2, mlp-64, mlp-256, head
    assert f[1, 0] == pytest.approx(0.5 + 1 + 1.25 + 1.0 + 1.0)
    assert f[1, 6] < f[0, 6]  # weight MB
    prof.rows = [r for r in rows if r["format"] == "fp32"]
    with pytest.raises(LatencyModelError, match="format int8"):
        FeatureBuilder(prof, Shape.of(config), [64, 256]).build(keep, widths, "decode", 1, 0, 1, formats=formats)


def test_profile_grid_times_each_format_and_old_tables_load(tmp_path):
    from hwnas.profile import OperatorGrid, read_lut

    grid = OperatorGrid(mlp_widths=[64, 128], formats=["fp32", "int8"])
    assert [j[2] for j in grid.jobs()].count("int8") == 4 and "formats" in grid.to_dict()
    assert "formats" not in OperatorGrid(mlp_widths=[64]).to_dict()  # old profiles keep their identity
    old = tmp_path / "lut.csv"
    old.write_text("op,width,phase,tokens,context,batch,median_ms,p90_ms,cv,cv_raw,repeats,peak_mem_mb,flagged,"
                   "load,threads\nhead,0,decode,1,0,1,1.0,1.0,0,0,1,1,False,0,1\n")
    assert read_lut(old)[0]["format"] == "fp32"


def _search(tiny_llama, tmp_path, backend="onnxruntime", formats=None, **linas):
    from hwnas.evaluate.evaluator import Evaluator
    from hwnas.search import LinasConfig, Objective, RunConfig, Search

    tmp_path.mkdir(parents=True, exist_ok=True)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{(i * 7) % 23}" for i in range(3000)))
    task = f"text:{text}"
    space_file = tmp_path / "space.yaml"
    (dataclasses.replace(SPACE, weight_formats=tuple(formats)) if formats else SPACE).save(space_file)
    cfg = RunConfig(model="tiny", space=str(space_file), objectives=[Objective(f"{task}.ppl"), Objective("size_mb")],
                    tasks=[task], backend=backend, seed=2,
                    linas=LinasConfig(**{"initial": 8, "rounds": 1, "per_round": 4, "inner_evaluations": 200,
                                         "population": 20, **linas}))
    ev = Evaluator(tiny_llama.tokenizer, [task], ppl_windows=2, ppl_window=64)
    return Search(cfg, tmp_path / "run", supernet=Supernet(tiny_llama), evaluator=ev)


def test_joint_search_evaluates_simulated_formats_and_starts_from_the_baselines(tiny_llama, tmp_path):
    search = _search(tiny_llama, tmp_path)
    res = search.run()
    subs = [Subnet.from_dict(r["subnet"]) for r in res.records]
    assert any(s.compression is not None for s in subs) and len({s.key() for s in subs}) == len(subs)
    round0 = [s for s, r in zip(subs, res.records) if r["round"] == 0 and not r["is_base"]]
    # round 0 starts with the baselines: the base, then layer dropping, every weight int8
    full = search.sn.full_subnet()
    assert round0[0] == full.compressed(Compression.uniform("int8", full.depth))
    assert round0[1].compression == Compression.uniform("int8", round0[1].depth) and round0[1].depth < 4
    assert round0[1].mlp_widths == (256,) * round0[1].depth
    # int8 weights change the perplexity (the simulation ran) and shrink the size
    base = next(r for r in res.records if r["is_base"])
    rec = search.evaluate(round0[0], 9)  # already in the store: its record
    task = search.cfg.tasks[0]
    assert rec["metrics"][task]["ppl"] != base["metrics"][task]["ppl"]
    assert rec["costs"]["size_mb"] < 0.5 * base["costs"]["size_mb"]
    assert rec["latency_predicted"] == {} and rec["subnet"]["compression"]["head"] == "int8"


def test_joint_search_needs_a_runtime_that_runs_its_formats(tiny_llama, tmp_path):
    from hwnas.errors import HwnasUserError

    with pytest.raises(HwnasUserError, match="name the runtime"):
        _search(tiny_llama, tmp_path, backend=None)
    with pytest.raises(CompressionError, match="does not run"):
        _search(tiny_llama, tmp_path / "b", backend="openvino")
    assert not (tmp_path / "run").exists()


def test_head_block_stores_a_tied_head_apart(tiny_llama):
    from hwnas.measure.graphs import build_module

    module, _ = build_module(tiny_llama.model, "head")
    assert module.lm_head.weight is not module.embed.weight
    assert torch.equal(module.lm_head.weight, module.embed.weight)


def test_a_backend_refuses_formats_it_does_not_run():
    from hwnas.errors import BackendError
    from hwnas.measure.backend import backend_class
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import check_weight_formats

    s = Subnet((0, 1), (64, 64), Compression.uniform("int8", 2))
    check_weight_formats(backend_class("onnxruntime"), GraphSpec("model", "tiny", subnet=s.to_dict()))
    with pytest.raises(BackendError, match="does not run weight format"):
        check_weight_formats(backend_class("openvino"), GraphSpec("model", "tiny", subnet=s.to_dict()))
    with pytest.raises(BackendError, match="does not run weight format"):
        check_weight_formats(backend_class("torch"), GraphSpec("mlp", "tiny", width=64, weights="int8"))


@pytest.mark.skipif(not __import__("importlib").util.find_spec("onnxruntime"), reason="needs onnxruntime")
def test_simulated_int4_weights_equal_matmulnbits_and_formats_mix(tiny_llama, tmp_path, monkeypatch):
    """int4 blocks become MatMulNBits nodes whose stored weights are, value for value, the ones the
    simulation uses (MLAS's full-range symmetric scale); int8 and fp32 blocks in the same graph stay
    what the plan says; the exported mixed graph agrees with the simulation."""
    import onnx
    from hwnas_backends.onnxruntime_backend import INT4, INT8, OnnxRuntimeBackend
    from onnx import helper, numpy_helper

    from hwnas.export import export
    from hwnas.measure.graphs import build_module

    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(tmp_path / "graphs"))
    sn = Supernet(tiny_llama)
    s = Subnet((0, 1, 3), (256, 128, 64))
    comp = Compression(("int4", "fp32", "int8"), ("int8", "int4", "int4"), "int4", "int4")
    module, io = build_module(sn.materialize(s, share_weights=True), "model", weights=comp)
    import logging

    root = (list(logging.getLogger().handlers), logging.getLogger().level)
    OnnxRuntimeBackend.convert(module, io, tmp_path / "g", OnnxRuntimeBackend.CONFIG())
    # the quantizer module's import-time logging.basicConfig(INFO) is undone
    assert (list(logging.getLogger().handlers), logging.getLogger().level) == root
    graph = onnx.load(str(tmp_path / "g" / "graph.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nbits = {n.input[1]: n for n in graph.node if n.op_type == "MatMulNBits"}
    # q/k/v/o of layer 0, gate/up/down of layers 1 and 2, and the head: 4 + 6 + 1
    assert len(nbits) == 11 and all(k.endswith("_Q4") for k in nbits), sorted(nbits)
    assert {n[: -len("_quantized")] for n in inits if n.endswith("_quantized")} == {
        "embed/embed.weight", *(f"layer0/mlp.{p}.weight.T" for p in ("gate", "up", "down")),
        *(f"layer2/attn.attn.{p}_proj.weight.T" for p in "qkvo")}
    sim = simulate(sn.materialize(s, share_weights=True), comp, {"int8": INT8, "int4": INT4})

    def deq4(name):
        node = nbits[f"{name}_Q4"]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["accuracy_level"] == 4 and attrs["block_size"] == INT4.group_size
        b, scales = inits[node.input[1]], inits[node.input[2]]
        n, blocks = b.shape[:2]
        q = np.stack([b & 0x0F, b >> 4], -1).reshape(n, blocks, -1).astype(np.float32)
        return ((q - 8) * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, : attrs["K"]]

    assert np.array_equal(deq4("layer2/mlp.down.weight.T"), sim.model.layers[2].mlp.down_proj.weight.numpy())
    assert np.array_equal(deq4("layer0/attn.attn.q_proj.weight.T"), sim.model.layers[0].self_attn.q_proj.weight.numpy())
    assert np.array_equal(deq4("final/lm_head.weight.T"), sim.lm_head.weight.numpy())
    assert not np.array_equal(deq4("layer1/mlp.up.weight.T"), sn.model.model.layers[1].mlp.up_proj.weight.detach().numpy()[:128])
    m = export(sn, s.compressed(comp), "onnx", tmp_path / "a", measure=False)
    v = m["verification"]
    assert m["compression"] == comp.to_dict() and v["cosine"] > 0.999 and v["top1_agreement"] >= 0.95


def test_block_sensitivity_orders_blocks_and_the_ladder_seeds_the_search(tiny_llama, tmp_path):
    """With int4 and int8 per block, round 0 holds the greedy mixed-precision ladder: the base int8
    with the k blocks whose int4 costs the least perplexity (measured one block at a time) in int4."""
    from hwnas_backends.onnxruntime_backend import INT4, INT8

    from hwnas.compression import block_sensitivity, mixed_ladder

    sn = Supernet(tiny_llama)
    full = sn.full_subnet()
    ids = torch.randint(0, sn.model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    schemes = {"int8": INT8, "int4": INT4}
    before = {k: v.clone() for k, v in sn.model.state_dict().items()}
    order = block_sensitivity(lambda: sn.materialize(full, share_weights=True), schemes, "int8", "int4", ids)
    assert all(torch.equal(before[k], v) for k, v in sn.model.state_dict().items())
    assert len(order) == 2 * full.depth + 1 and [d for *_, d in order] == sorted(d for *_, d in order)
    assert {b for b, *_ in order} == {"attn", "mlp", "head"} and len({d for *_, d in order}) > 1
    ladder = mixed_ladder(full.depth, order, "int8", "int4", [1, 3])
    assert [c.formats().count("int4") for c in ladder] == [1, 3] and ladder[0].embed == "int8"
    first, j, _ = order[0]
    assert ladder[0].format_of(first, j) == "int4"
    # the search seeds it (a space with both formats per block)
    search = _search(tiny_llama, tmp_path, formats=["fp32", "int8", "int4"])
    seeds = search.heuristic_seeds(8, set())
    assert seeds[0] == full.compressed(Compression.uniform("int4", full.depth))
    assert seeds[1] == full.compressed(Compression.uniform("int8", full.depth))
    mixed = [s for s in seeds if s.compression and len(set(s.compression.formats())) == 2]
    assert mixed and all(s.depth == full.depth for s in mixed)
    assert search.block_sensitivity["low"] == "int4" and search.block_sensitivity["high"] == "int8"
    import json

    saved = json.loads((search.run_dir / "block_sensitivity.json").read_text())
    assert len(saved["blocks"]) == len(order) and saved["low"] == "int4"

"""Seconds per sub-network graph: composed from block templates vs a full dynamo export.

    python tools/bench_graphs.py speed  [--model smollm2-135m] [--backends onnxruntime openvino]
    python tools/bench_graphs.py parity [--model smollm2-135m] [--rounds 4]

`speed` times what `hwnas bench` of a sub-network never measured before costs, from sub-network
JSON to its first timed run (a fresh graph cache; prefill 8 + decode 4 tokens, so the figure is the
graph's cost, not the measurement's): with the templates not cached yet (the first sub-network of an
architecture), with them cached (every later one), and with $HWNAS_GRAPH_COMPOSE=0 (the full dynamo
export hwnas used before). Every run is a fresh `run_isolated` worker, as in the latency fit.

`parity` checks the composed graph against the dynamo one for the full model and a mixed
sub-network: logits of both on the same prompt (ONNX Runtime), and prefill 128 / decode at 128
context measured interleaved in rounds in fresh workers (ratio composed / dynamo, median and range).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MIXED = {"layers": [i for i in range(30) if i not in (3, 9, 15, 21, 25, 27)],
         "mlp_widths": [1536, 1024, 768, 1280, 1536, 512, 1024, 1536, 768, 1280, 1024, 1536,
                        512, 1024, 1536, 768, 1280, 1024, 1536, 512, 1024, 1536, 768, 1280]}


def _load() -> str:
    import psutil

    return f"{max(0.0, psutil.getloadavg()[0] - 1):.2f}"


def _first_run(model: str, subnet: dict, backend: str, cache: Path, compose: bool) -> tuple[float, float]:
    """Wall seconds from the sub-network JSON to the measuring worker holding the loaded graph (the
    first timed run starts then), and to the end of a short measurement."""
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_isolated

    env = {"HWNAS_GRAPH_CACHE": str(cache), "HWNAS_GRAPH_COMPOSE": "1" if compose else "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.time()
        res = run_isolated(backend, {"threads": 1}, GraphSpec("model", model, subnet=subnet),
                           [Task("prefill", tokens=8), Task("decode", context=8, steps=4)])
        return res.extra["ready_at"] - t0, time.time() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def speed(args: argparse.Namespace) -> None:
    import random

    from hwnas.model import load_config
    from hwnas.space import SearchSpace

    cfg = load_config(args.model)
    space = SearchSpace.for_model(args.model, cfg.num_hidden_layers, cfg.intermediate_size)
    rng = random.Random(0)
    print(f"# {args.model}; other processes' load (1-min avg minus this one): {_load()}")
    print("| backend | graph | subnet | s JSON -> first timed run | s JSON -> prefill 8 + decode 4 measured |")
    print("|---|---|---|---|---|")
    for backend in args.backends:
        with tempfile.TemporaryDirectory(prefix="hwnas-graphs-") as tmp:
            cache = Path(tmp)
            rows = [("composed, templates not cached", True), ("composed, templates cached", True),
                    ("composed, templates cached", True),
                    ("whole-model conversion (before)", False)]
            for label, compose in rows:
                if not compose:
                    label += " (dynamo export)" if backend == "onnxruntime" else " (ov.convert_model)"
                sub = space.sample(rng)
                ready, done = _first_run(args.model, sub, backend, cache, compose)
                print(f"| {backend} | {label} | depth {len(sub['layers'])} | {ready:.1f} | {done:.1f} |", flush=True)


# (name, composed, weights in graph.onnx.data): as measured, as shipped in an artifact, the reference
VARIANTS = (("composed", True, True), ("composed-inline", True, None), ("dynamo", False, None))


def _workdirs(model: str, subnet: dict | None, root: Path) -> dict[str, Path]:
    """Both graphs of one sub-network for both backends: {variant: folder}."""
    from hwnas_backends.onnx_export import convert_openvino, export_onnx, save_openvino

    from hwnas.measure.graphs import GraphSpec, build

    module, io = build(GraphSpec("model", model, subnet=subnet))
    out = {}
    for variant, compose, external in VARIANTS:
        folder = root / variant
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        export_onnx(module, io, folder / "graph.onnx", compose=compose, external_data=external)
        t1 = time.perf_counter()
        save_openvino(convert_openvino(module, io, stateful=True, compose=compose), folder / "openvino_stateful.xml")
        print(f"#   {variant}: onnx {t1 - t0:.1f} s, openvino {time.perf_counter() - t1:.1f} s", flush=True)
        out[variant] = folder
    return out


def _logit_diff(model: str, subnet: dict | None, dirs: dict[str, Path]) -> tuple[float, bool]:
    import numpy as np
    import onnxruntime as ort

    from hwnas.measure.graphs import GraphSpec, graph_io_for

    io = graph_io_for(GraphSpec("model", model, subnet=subnet))
    x = io.make_x(1, 16).numpy()
    past = [p.numpy() for p in io.make_past(1, 0)]
    outs = {}
    for v, d in dirs.items():
        s = ort.InferenceSession(str(d / "graph.onnx"), providers=["CPUExecutionProvider"])
        outs[v] = s.run(None, dict(zip(io.input_names, [x, *past])))
    diff = max(float(np.abs(a - b).max()) for v in outs for a, b in zip(outs[v], outs["dynamo"]))
    same_top1 = all(bool((outs[v][0].argmax(-1) == outs["dynamo"][0].argmax(-1)).all()) for v in outs)
    return diff, same_top1


def parity(args: argparse.Namespace) -> None:
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_isolated

    print(f"# {args.model}; other processes' load at start: {_load()}")
    tasks = [Task("prefill", tokens=128), Task("decode", context=128)]
    with tempfile.TemporaryDirectory(prefix="hwnas-parity-") as tmp:
        for name, subnet in (("full", None), ("mixed 24 layers", MIXED)):
            print(f"# {name}: building both graphs", flush=True)
            dirs = _workdirs(args.model, subnet, Path(tmp) / name.split()[0])
            diff, top1 = _logit_diff(args.model, subnet, dirs)
            print(f"# {name}: max |logit or cache difference| composed vs dynamo {diff:.2e}, same top-1: {top1}")
            spec = GraphSpec("model", args.model, subnet=subnet)
            names = [v[0] for v in VARIANTS]
            for backend in args.backends:
                variants = names if backend == "onnxruntime" else ["composed", "dynamo"]  # OV: one IR each
                ratios: dict[tuple[str, str], list[float]] = {}
                for r in range(args.rounds):
                    got = {}
                    order = variants if r % 2 == 0 else variants[::-1]
                    for v in order:
                        res = run_isolated(backend, {"threads": 1}, spec, tasks, workdir=dirs[v])
                        got[v] = [m.median_ms for m in res.measurements]
                    for v in variants[:-1]:
                        for i, ph in enumerate(("prefill", "decode")):
                            ratios.setdefault((v, ph), []).append(got[v][i] / got["dynamo"][i])
                    print(f"#   {backend} round {r}: {got} ms (load {_load()})", flush=True)
                for (v, ph), rs in ratios.items():
                    print(f"| {name} | {backend} | {ph} | {v}/dynamo {statistics.median(rs):.3f} "
                          f"(range {min(rs):.3f}-{max(rs):.3f}, {len(rs)} rounds) |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("speed", "parity"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    {"speed": speed, "parity": parity}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

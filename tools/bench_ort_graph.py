"""Why ONNX Runtime INT8 decodes far below its bandwidth bound: graph fusion vs kernels, INT4 settings.

From one fp32 `graph.onnx` (an `hwnas export --format onnx` artifact of the base), writes variants
and times them in one process, interleaved in rounds (order shuffled per round), 1 thread:

- `int8`: `quantize_dynamic(QInt8, per_channel)` — what `onnx-int8` ships;
- `fused`, `fused-int8`: the graph after onnxscript's ONNX Runtime fusions (`optimize_for_ort`:
  RMSNorm, skip-RMSNorm, rotary embedding, attention where its patterns match), then the same int8;
- `nbits4-B-aA`: `MatMulNBitsQuantizer` int4, symmetric, block B, accuracy_level A (what `onnx-int4`
  ships is B=32, A=4), and `nbits8-32-a4`.

Prints decode ms/token (one token at 128 tokens of context) and prefill ms (128 tokens): medians
over rounds with their range, node counts after ORT's own optimization, and ORT's profiler's
kernel-time split of the int8 graph (matrix products vs the rest).

    python tools/bench_ort_graph.py BASE_ONNX_ARTIFACT_DIR [--rounds 3] [--out /tmp/ort-graph]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _session(path: Path, profile: str | None = None, optimized: Path | None = None):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        o.enable_profiling, o.profile_file_prefix = True, profile
    if optimized:
        o.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _feeds(sess, seq: int, past: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return {i.name: (rng.integers(0, 49000, (1, seq)).astype(np.int64) if i.name == "input_ids"
                     else rng.standard_normal((1, 3, past, 64)).astype(np.float32)) for i in sess.get_inputs()}


def _median_ms(sess, feeds, *, warmup: int, repeats: int) -> float:
    """Median ms of `repeats` runs of `feeds` after `warmup` untimed ones (the cache input is fed
    each time, so every run is the same step)."""
    for _ in range(warmup):
        sess.run(None, feeds)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def _variants(src: Path, out: Path) -> dict[str, Path]:
    import onnx
    from hwnas_backends.onnxruntime_backend import _nbits_quantizer, _quiet
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    v = {"fp32": src}

    def save(model, path: Path) -> Path:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")
        return path

    def int8(a: Path, b: Path) -> Path:
        if not b.is_file():
            quantize_dynamic(str(a), str(b), weight_type=QuantType.QInt8, per_channel=True,
                             use_external_data_format=True)
        return b

    v["int8"] = int8(src, out / "int8.onnx")
    fused = out / "fused.onnx"
    if not fused.is_file():
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        m, counts = optimize_for_ort(ir.load(str(src)))
        (out / "fusions.json").write_text(json.dumps({k: c for k, c in counts.items() if c}))
        ir.save(m, str(fused), external_data=f"{fused.name}.data")
    v["fused"] = fused
    v["fused-int8"] = int8(fused, out / "fused-int8.onnx")
    q = _nbits_quantizer()
    for bits, block, acc in ((4, 32, 4), (4, 64, 4), (4, 128, 4), (4, 32, 0), (8, 32, 4)):
        name = f"nbits{bits}-{block}-a{acc}"
        path = out / f"{name}.onnx"
        if not path.is_file():
            qz = q(onnx.load(str(src)), bits=bits, block_size=block, is_symmetric=True, accuracy_level=acc)
            _quiet(qz.process)
            save(qz.model.model, path)
        v[name] = path
    return v


def _kernel_split(path: Path, out: Path) -> dict[str, float]:
    """ORT's profiler on 20 decode steps: ms per step in matrix-product kernels and in the rest."""
    sess = _session(path, profile=str(out / "prof"))
    f = _feeds(sess, 1, 128)
    for _ in range(20):
        sess.run(None, f)
    events = json.loads(Path(sess.end_profiling()).read_text())
    by: dict[str, float] = collections.defaultdict(float)
    runs = 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
        if e.get("cat") == "Session" and e["name"] == "model_run":
            runs += 1
    mm = sum(t for op, t in by.items() if "MatMul" in op)
    return {"matmul_ms": mm / runs / 1e3, "other_ms": (sum(by.values()) - mm) / runs / 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", help="an `hwnas export --format onnx` folder of the base (fp32)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/ort-graph")
    args = ap.parse_args()

    import onnx

    from hwnas.fingerprint import cpu_model

    out = Path(args.out)
    variants = _variants(Path(args.artifact) / "graph.onnx", out)
    nodes = {}
    for name, path in variants.items():
        _session(path, optimized=out / f"opt-{name}.onnx")
        nodes[name] = len(onnx.load(str(out / f"opt-{name}.onnx"), load_external_data=False).graph.node)
    sessions = {name: _session(path) for name, path in variants.items()}
    dec = {n: [] for n in variants}
    pre = {n: [] for n in variants}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            s = sessions[name]
            dec[name].append(_median_ms(s, _feeds(s, 1, 128), warmup=3, repeats=15))
            pre[name].append(_median_ms(s, _feeds(s, 128, 0), warmup=1, repeats=3))
    print(f"# {cpu_model()}, 1 thread, {args.rounds} interleaved rounds (decode: 1 token at 128 of context; "
          "prefill: 128 tokens)")
    if (out / "fusions.json").is_file():
        print(f"# onnxscript optimize_for_ort fusions: {(out / 'fusions.json').read_text()}")
    print("| graph | nodes after ORT optimization | decode ms/token | prefill ms |")
    print("|---|---:|---:|---:|")
    for name in variants:
        d, p = dec[name], pre[name]
        print(f"| {name} | {nodes[name]} | {statistics.median(d):.2f} ({min(d):.2f}-{max(d):.2f}) | "
              f"{statistics.median(p):.1f} ({min(p):.1f}-{max(p):.1f}) |")
    split = _kernel_split(variants["int8"], out)
    print(f"# int8 decode under ORT's profiler: {split['matmul_ms']:.2f} ms/step in MatMul kernels, "
          f"{split['other_ms']:.2f} ms in the other kernels (profiling inflates both)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

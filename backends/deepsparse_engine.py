"""Runs inside the DeepSparse venv (python 3.11, deepsparse 1.8.0, numpy<2): compiles static-shape
engines and times them. Speaks JSON lines on stdin/stdout; imports nothing from hwnas or torch.

Request per line: {"op": "time", "onnx": path, "shapes": [[...], ...], "dtypes": [...],
"batch": B, "threads": n, "warmup": w, "repeats": r, "min_time_s": s, "max_repeats": m}
Reply per line: {"ok": true, "samples_ms": [...], "compile_s": x} or {"ok": false, "error": "..."}.
"""

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path


def main():
    import numpy as np
    from deepsparse import Engine

    engines = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["op"] == "versions":
                import deepsparse
                import onnx

                reply = {"ok": True, "versions": {"deepsparse": deepsparse.__version__, "onnx": onnx.__version__,
                                                  "numpy": np.__version__}}
                print(json.dumps(reply), flush=True)
                continue
            shapes = [tuple(s) for s in req["shapes"]]
            key = (req["onnx"], tuple(shapes), req["threads"])
            compile_s = 0.0
            if key not in engines:
                # deepsparse rewrites the .onnx it is given together with input_shapes: use a copy
                src = Path(req["onnx"])
                tag = hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:12]
                copy = src.with_name(f"{src.stem}.{tag}.onnx")
                shutil.copyfile(src, copy)
                t0 = time.perf_counter()
                try:
                    engines[key] = Engine(model=str(copy), batch_size=req["batch"], num_cores=req["threads"],
                                          input_shapes=[list(s) for s in shapes])
                finally:
                    copy.unlink()  # the engine holds what it needs; the copy is as large as the model
                compile_s = time.perf_counter() - t0
            engine = engines[key]
            rng = np.random.default_rng(0)
            inputs = []
            for shape, dtype in zip(shapes, req["dtypes"]):
                if dtype == "int64":
                    inputs.append(rng.integers(0, req.get("vocab", 100), size=shape, dtype=np.int64))
                else:
                    inputs.append(rng.standard_normal(shape, dtype=np.float32))
            for _ in range(req["warmup"]):
                engine.run(inputs)
            steps = req.get("steps")
            if not steps:  # loop short calls until one sample lasts min_sample_ms
                t0 = time.perf_counter()
                engine.run(inputs)
                ms = (time.perf_counter() - t0) * 1e3
                steps = int(max(1, min(256, -(-req["min_sample_ms"] // max(ms, 1e-6)))))
            samples = []
            t_start = time.perf_counter()
            while len(samples) < req["max_repeats"] and (
                    len(samples) < req["repeats"] or time.perf_counter() - t_start < req["min_time_s"]):
                t0 = time.perf_counter()
                for _ in range(steps):
                    engine.run(inputs)
                samples.append((time.perf_counter() - t0) * 1e3 / steps)
            reply = {"ok": True, "samples_ms": samples, "compile_s": compile_s}
        except Exception as exc:  # sent back to the parent
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

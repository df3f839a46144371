"""DeepSparse backend (1.8.0 only). deepsparse pins onnx 1.14.1 and numpy<2, so it lives in its own
venv (`hwnas backends --setup deepsparse` creates one in the hwnas cache; or point
`HWNAS_DEEPSPARSE_PYTHON` at a python that has it) and runs `deepsparse_engine.py` there as a worker
process. Graphs are exported here (ONNX, like the onnxruntime backend) and compiled there per static
shape; prefill uses a graph without cache inputs (DeepSparse hands a zero-length past to its bundled
ORT instead of its own engine), decode a graph with a cache of the asked-for length, re-run at
that length for every step (static shapes: the cache does not grow).

The plugin also declares the `deepsparse` artifact format (`register_formats`): the two graphs
DeepSparse compiles, verified by ONNX Runtime on the decode graph. A model that is already sparse
(`hwnas prune`, `hwnas recover`) keeps its zeros; a dense one is magnitude-pruned (`--sparsity`,
default 0.7: the baseline, unusable without recovery)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwnas.measure.backend import Backend, BackendConfig, Measurement, dist_versions

VERSION = "1.8.0"
REQUIREMENTS = [f"deepsparse=={VERSION}", "onnx==1.14.1", "numpy<2"]
ENV_VAR = "HWNAS_DEEPSPARSE_PYTHON"
READY_VENV = "hwnas-venv-ready"
READY = "deepsparse.ready"  # written once both graphs are converted
DEFAULT_SPARSITY = 0.7  # magnitude pruning of a dense model when --sparsity is not given
OPSET, IR_VERSION = 18, 8  # deepsparse 1.8's bundled ORT reads opset <= 19 and IR <= 9 (torch: 20+, 10)


@dataclass
class DeepSparseConfig(BackendConfig):
    python: str = ""  # interpreter of the deepsparse venv (default: $HWNAS_DEEPSPARSE_PYTHON or the cache one)


def venv_dir() -> Path:
    from hwnas.model import cache_root

    return cache_root() / "venvs" / f"deepsparse-{VERSION}"


def venv_python() -> Path:
    """The interpreter that has deepsparse: $HWNAS_DEEPSPARSE_PYTHON, else the hwnas-made venv."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else venv_dir() / "bin" / "python"


def find_python311() -> str | None:
    """deepsparse 1.8.0 ships wheels up to cp311."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return shutil.which("python3.11")


def setup_venv(log=print) -> Path:
    """Create the deepsparse venv in the hwnas cache (about 30 s and 485 MB); idempotent."""
    from hwnas.errors import BackendError

    target = venv_dir()
    py = target / "bin" / "python"
    if _has_deepsparse(py):
        log(f"deepsparse venv already present: {target}")
        return py
    base = find_python311()
    if base is None:
        raise BackendError("deepsparse 1.8.0 needs python 3.11 (no python3.11 on PATH); install it, or "
                           f"point {ENV_VAR} at a python that has deepsparse=={VERSION}")
    shutil.rmtree(target, ignore_errors=True)
    log(f"creating {target} with {base} ({' '.join(REQUIREMENTS)}) ...")
    subprocess.run([base, "-m", "venv", str(target)], check=True)
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS],
                         capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise BackendError(f"pip could not install {' '.join(REQUIREMENTS)}: {res.stderr.strip()[-400:]}")
    (target / READY_VENV).write_text(" ".join(REQUIREMENTS) + "\n")
    return py


def _has_deepsparse(py: Path) -> bool:
    """The venv was completed by `setup_venv` (or, for a pointed-at python, has deepsparse 1.8.0)."""
    root = py.parent.parent
    if (root / READY_VENV).is_file():
        return True
    return any((root / "lib").glob(f"python3*/site-packages/deepsparse-{VERSION}.dist-info"))


def sparsify(model: Any, asked: float | None) -> dict[str, Any]:
    """Make `model` sparse for DeepSparse: a pruned model (hwnas prune / recover) keeps its zeros
    unless `asked` names a sparsity; a dense one is magnitude-pruned to `asked` (default 0.7).
    Returns the manifest's record of what was done."""
    from hwnas.prune import SPARSE_MODEL_AT, achieved_sparsity, magnitude_prune

    if asked is None and achieved_sparsity(model)["overall"] >= SPARSE_MODEL_AT:
        how = "kept the model's zeros (a pruned model: hwnas prune / recover)"
    else:
        target = DEFAULT_SPARSITY if asked is None else float(asked)
        magnitude_prune(model, target)
        how = f"magnitude, {target:.0%} of every decoder linear (no calibration, no recovery)"
    return {"pruning": how, "achieved_sparsity": achieved_sparsity(model)}


def _check_artifact(ctx: Any) -> None:
    from hwnas.export import ExportError

    ok, why = DeepSparseBackend.available()
    if not ok:
        raise ExportError(f"deepsparse format: {why}")
    s = ctx.options.get("sparsity")
    if s is not None and not 0.0 <= float(s) < 1.0:
        raise ExportError(f"--sparsity must be in [0, 1), got {s}")


def _write_artifact(ctx: Any) -> None:
    import copy

    from hwnas.measure.graphs import build_module

    from .onnx_export import export_onnx

    ctx.model = copy.deepcopy(ctx.model)  # its tensors are the base's own: prune a copy
    ctx.options.update(sparsify(ctx.model, ctx.options.get("sparsity")))
    module, io = build_module(ctx.model, "model")
    export_onnx(module, io, ctx.out / "deepsparse_prefill.onnx", with_past=False, opset=OPSET, ir_version=IR_VERSION)
    export_onnx(module, io, ctx.out / "deepsparse_decode.onnx", opset=OPSET, ir_version=IR_VERSION)
    ctx.model.save_pretrained(ctx.out / "pruned_hf")  # the pruned weights, for recovery fine-tuning elsewhere
    (ctx.out / READY).write_text("")


def _runner_folder(art: Path) -> Path:
    """The artifact as ONNX Runtime (its runner) reads it: the decode graph (dynamic past), unchanged,
    linked as `graph.onnx` in a folder of its own."""
    import tempfile

    link_dir = Path(tempfile.mkdtemp(prefix="hwnas-verify-"))
    (link_dir / "graph.onnx").symlink_to((Path(art) / "deepsparse_decode.onnx").resolve())
    return link_dir


class DeepSparseBackend(Backend):
    NAME = "deepsparse"
    CONFIG = DeepSparseConfig
    STATIC_SHAPES = True
    CONVERTS = True
    FORMAT_ORDER = 50
    SETUP = f"a private venv with {' '.join(REQUIREMENTS)} in the hwnas cache (python 3.11; ~30 s, ~485 MB)"

    @classmethod
    def setup(cls, log: Any) -> None:
        py = setup_venv(log=log)
        log(f"deepsparse venv ready: {py}")

    @classmethod
    def register_formats(cls, register: Any) -> None:
        register("deepsparse", "sparse attention and MLP linears (a pruned model's zeros, else magnitude "
                 "--sparsity), ONNX compiled by DeepSparse 1.8 (the only runtime here that turns unstructured "
                 "sparsity into speed)", "fp32-sparse",
                 _write_artifact, requires=("onnx",), check=_check_artifact, runner="onnxruntime",
                 runner_folder=_runner_folder, weight_files=("deepsparse_decode.onnx",))

    @classmethod
    def has_artifacts(cls, workdir: Path, config: Any) -> bool:
        return (Path(workdir) / READY).is_file()

    @classmethod
    def available(cls) -> tuple[bool, str]:
        import platform

        if platform.machine() not in ("x86_64", "AMD64", "aarch64"):
            return False, f"deepsparse does not run on {platform.machine()}"
        py = venv_python()
        if not py.is_file():
            return False, (f"no deepsparse venv at {py.parent.parent}: run `hwnas backends --setup deepsparse` "
                           f"or set {ENV_VAR}")
        if not _has_deepsparse(py):
            return False, f"{py.parent.parent} lacks deepsparse=={VERSION}: run `hwnas backends --setup deepsparse`"
        return True, ""

    @classmethod
    def versions(cls) -> dict[str, str]:
        py = venv_python()
        lib = py.parent.parent / "lib"
        found = {"deepsparse": VERSION}
        for name in ("onnx", "numpy"):
            for d in lib.glob(f"python3*/site-packages/{name}-*.dist-info"):
                found[name] = d.name[len(name) + 1: -len(".dist-info")]
        return {**found, **dist_versions("torch")}

    def _python(self) -> str:
        return self.config.python or str(venv_python())

    def prepare(self, module: Any, io: Any, workdir: Path) -> None:
        from .onnx_export import export_onnx

        self.io = io
        workdir = Path(workdir)
        self.prefill_onnx = workdir / "deepsparse_prefill.onnx"
        self.decode_onnx = workdir / "deepsparse_decode.onnx" if io.n_layers_past else None
        if not self.prefill_onnx.is_file():
            export_onnx(module, io, self.prefill_onnx, with_past=False, opset=OPSET, ir_version=IR_VERSION)
        if self.decode_onnx is not None and not self.decode_onnx.is_file():
            export_onnx(module, io, self.decode_onnx, opset=OPSET, ir_version=IR_VERSION)
        (workdir / READY).touch()
        engine = Path(__file__).with_name("deepsparse_engine.py")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen([self._python(), str(engine)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.compile_s: list[float] = []

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"deepsparse worker exited with {self.proc.wait()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"deepsparse: {reply['error']}")
        return reply

    def _remote(self, phase: str, tokens: int, context: int, batch: int, steps: int | None) -> Measurement:
        x_shape = [batch, tokens] + ([self.io.hidden_size] if self.io.x_kind == "hidden" else [])
        x_dtype = "int64" if self.io.x_kind == "ids" else "float32"
        if phase == "prefill" or not self.io.n_layers_past:
            onnx, shapes, dtypes = self.prefill_onnx, [x_shape], [x_dtype]
        else:
            kv = [batch, self.io.kv_heads, context, self.io.head_dim]
            onnx = self.decode_onnx
            shapes = [x_shape] + [kv] * len(self.io.past_names)
            dtypes = [x_dtype] + ["float32"] * len(self.io.past_names)
        cfg = self.config
        req = {"op": "time", "onnx": str(onnx), "shapes": shapes, "dtypes": dtypes, "batch": batch,
               "threads": cfg.threads, "warmup": cfg.warmup, "repeats": cfg.repeats, "min_time_s": cfg.min_time_s,
               "max_repeats": cfg.max_repeats, "steps": steps, "min_sample_ms": cfg.min_sample_ms, "vocab": self.io.vocab_size}

        def collect() -> list[float]:
            reply = self._ask(req)
            self.compile_s.append(reply["compile_s"])
            return reply["samples_ms"]

        return self._collect_measurement(phase, tokens, context, batch, collect)

    def prefill(self, tokens: int, batch: int = 1) -> Measurement:
        return self._remote("prefill", tokens, 0, batch, None)

    def decode(self, context: int, batch: int = 1, steps: int | None = None) -> Measurement:
        return self._remote("decode", 1, context, batch, steps)

    def close(self) -> None:
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

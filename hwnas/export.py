"""Deployable artifacts: a sub-network exported through the runtime that will run it, verified
against torch on held-out text, re-measured, and described by `manifest.json`.

Formats are a registry (`FORMATS`): each writes its runtime files into the artifact folder under
the names its backend plugin reads (`graph.onnx` for ONNX Runtime, `openvino_stateful.xml/.bin`
for OpenVINO, an HF folder for torch), so the same plugin measures it and runs it. The core
registers `hf` (the torch sub-network as it is); every other format is declared by the plugin that
runs it (`Backend.register_formats`), so this module names no runtime library. Every artifact
folder also holds `config.json` and the tokenizer. Verification feeds held-out tokens one at a
time through the runtime's KV cache and compares every position's logits with the fp32 torch
sub-network; the reference top-5 logits are kept in the manifest so `hwnas verify` can re-check an
artifact later without the source model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import HwnasUserError
from .fileio import sha256_file, write_json
from .outdir import LOCK, MARKER, TMP_MARKER, check_out, replace_dir

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class ExportError(HwnasUserError):
    """A format cannot be produced here (missing runtime, wrong device, incompatible widths)."""


@dataclass
class ExportContext:
    model: Any  # the torch sub-network, in the base's dtype; its tensors are the base's: never modify in place
    tokenizer: Any
    out: Path
    options: dict[str, Any] = field(default_factory=dict)
    compression: Any = None  # hwnas.compression.Compression the runtime files must carry (None: fp32)
    source: str | None = None  # the base model's resolved path (a GGUF source lends its vocabulary)
    data_dir: Any = None  # where calibration text is read (`hwnas.data`), for formats that calibrate


@dataclass(frozen=True)
class Format:
    name: str
    backend: str  # the plugin that measures and runs it
    description: str
    precision: str
    write: Callable[[ExportContext], None]
    requires: tuple[str, ...] = ()
    check: Callable[[ExportContext], None] | None = None
    backend_config: dict[str, Any] = field(default_factory=dict)
    runner: str | None = None  # the plugin that runs it for verify/run when `backend` only times it
    weights: str | None = None  # the one weight format it stores every block in (onnx-int8: int8)
    per_block: bool = False  # writes a compressed sub-network's per-block formats (`ctx.compression`)
    # the folder `runner` prepares from, made from the artifact folder: a temporary folder, removed once the
    # runner has read it (None: the artifact folder itself)
    runner_folder: Callable[[Path], Path] | None = None
    # the artifact's files a decode step streams, for the roofline (empty: every .bin / .onnx /
    # .onnx.data / .safetensors / .gguf file)
    weight_files: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {}


def register_format(name: str, backend: str, description: str, precision: str, requires: tuple[str, ...] = (),
                    check: Callable[[ExportContext], None] | None = None,
                    backend_config: dict[str, Any] | None = None, runner: str | None = None,
                    weights: str | None = None, per_block: bool = False,
                    runner_folder: Callable[[Path], Path] | None = None, weight_files: tuple[str, ...] = ()):
    def deco(fn: Callable[[ExportContext], None]) -> Callable[[ExportContext], None]:
        FORMATS[name] = Format(name, backend, description, precision, fn, requires, check, backend_config or {},
                               runner, weights, per_block, runner_folder, tuple(weight_files))
        return fn
    return deco


@register_format("hf", "torch", "HF safetensors folder (transformers loads it; fp32)", "fp32")
def _write_hf(ctx: ExportContext) -> None:
    ctx.model.save_pretrained(ctx.out)


def _register_plugin_formats() -> None:
    """The formats backend plugins declare themselves (`Backend.register_formats`), after the core's,
    plugin by plugin in `Backend.FORMAT_ORDER` (then name) order."""
    from hwnas.measure.backend import backend_class, backend_names

    def registrar(backend: str) -> Callable[..., None]:
        def register(name: str, description: str, precision: str, write: Callable[[ExportContext], None],
                     **options: Any) -> None:
            if name not in FORMATS:
                register_format(name, backend, description, precision, **options)(write)
        return register

    classes = []
    for backend in backend_names():
        try:
            classes.append((backend, backend_class(backend)))
        except Exception:  # a broken plugin is listed by `hwnas backends`, not fatal here
            continue
    for backend, cls in sorted(classes, key=lambda bc: (bc[1].FORMAT_ORDER, bc[0])):
        cls.register_formats(registrar(backend))


_register_plugin_formats()


# --- running an artifact ----------------------------------------------------------------------


def open_runtime(art: Path, manifest: dict[str, Any], threads: int = 1):
    """The artifact's runtime plugin, prepared from its files (ready for `step`)."""
    from hwnas.measure.backend import backend_class
    from hwnas.measure.graphs import build_module, graph_io

    from .model import load_config

    fmt = FORMATS[manifest["format"]]
    name = fmt.runner or fmt.backend
    cls = backend_class(name)
    be = cls(cls.CONFIG.from_dict({"threads": threads, **(fmt.backend_config if name == fmt.backend else {})}))
    module = None
    if not cls.CONVERTS:  # a runtime that runs the torch module itself: the artifact's HF folder
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(art).eval()
        module, io = build_module(model, "model")
    else:
        cfg = load_config(str(art))
        io = graph_io(cfg, "model", cfg.num_hidden_layers)
    if fmt.runner_folder is None:
        be.prepare(module, io, art)
        return be, io
    import shutil

    link = fmt.runner_folder(art)  # a temporary folder of the plugin's: gone once the runner has read it
    try:
        be.prepare(module, io, link)
    finally:
        shutil.rmtree(link, ignore_errors=True)
    return be, io


def _last_logits(be, vocab: int) -> np.ndarray:
    out = be.outputs()
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out).reshape(-1)[-vocab:]


def stream_logits(be, io, ids: np.ndarray, prompt: int = 1) -> np.ndarray:
    """Logits at positions prompt-1 .. T-2 (predicting tokens prompt .. T-1): a prefill of `prompt`
    tokens, then one token per step through the runtime's KV cache."""
    be.load_past(io.make_past(1, 0))
    out = []
    be.step(torch.as_tensor(ids[None, :prompt]))
    out.append(_last_logits(be, io.vocab_size))
    for t in range(prompt, len(ids) - 1):
        be.step(torch.as_tensor(ids[None, t : t + 1]))
        out.append(_last_logits(be, io.vocab_size))
    return np.stack(out).astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare(ref: np.ndarray, got: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Max |diff|, mean cosine, top-1 agreement and perplexity of both on the same targets."""
    cos = (ref * got).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    nll_ref = -_log_softmax(ref.astype(np.float64))[np.arange(len(targets)), targets].mean()
    nll_got = -_log_softmax(got.astype(np.float64))[np.arange(len(targets)), targets].mean()
    return {"max_abs_diff": float(np.abs(ref - got).max()), "cosine": float(cos.mean()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "ppl_torch": float(math.exp(nll_ref)), "ppl_artifact": float(math.exp(nll_got)),
            "ppl_change": float(math.exp(nll_got - nll_ref) - 1.0), "positions": int(len(targets))}


def heldout_tokens(tokenizer, n: int = 96, data_dir: str | Path | None = None) -> np.ndarray:
    """Held-out text for verification: WikiText-2 test (its second half; the search uses the start),
    or a fixed sentence when no data folder is available."""
    from .errors import DataNotFoundError
    from .evaluate.perplexity import load_text

    try:
        text = load_text(data_dir=data_dir)
        text = text[len(text) // 2 : len(text) // 2 + 20 * n]
    except DataNotFoundError:
        text = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
                "structure in Paris. Its base is square, measuring 125 metres on each side. ") * 4
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return np.asarray(ids, dtype=np.int64)


# --- export -----------------------------------------------------------------------------------


def is_unmarked_artifact(folder: Path) -> bool:
    """An artifact written before folders carried hwnas's marker: its manifest lists every file it
    holds (so replacing it deletes nothing hwnas did not write)."""
    try:
        m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = set(m["files"]) | {MANIFEST}
        held = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(m.get("format"), str) and held <= listed


def export(sn, subnet, fmt_name: str, out: str | Path, *, data_dir: str | Path | None = None,
           options: dict[str, Any] | None = None, measure: bool = True, threads: int = 1,
           latency_model: str | None = None, prefill: int = 128, decode: int = 32,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Materialize `subnet` from the super-network `sn`, write format `fmt_name` into `out`,
    verify it against torch, measure it on its backend, and write `manifest.json`."""
    import importlib.util

    if fmt_name not in FORMATS:
        raise ExportError(f"unknown format '{fmt_name}'; choose one of {', '.join(FORMATS)}")
    fmt = FORMATS[fmt_name]
    say = progress or (lambda _m: None)
    out = Path(out)
    check_out(out, "export", legacy=is_unmarked_artifact)
    compression = _compression_for(subnet, fmt)
    model = sn.materialize(subnet.architecture, share_weights=True)  # writers copy what they change
    ctx = ExportContext(model, sn.base.tokenizer, out, dict(options or {}), compression, sn.base.source, data_dir)
    if fmt.check:  # device / shape requirements first: they say what to do instead
        fmt.check(ctx)
    missing = [m for m in fmt.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"format {fmt_name} needs {', '.join(missing)}: pip install it (see the README extras)")
    with replace_dir(out, "export", legacy=is_unmarked_artifact) as tmp:
        ctx.out = tmp
        manifest = _write_artifact(sn, subnet, fmt, ctx, data_dir=data_dir, measure=measure, prefill=prefill,
                                   decode=decode, threads=threads, latency_model=latency_model, say=say)
    return manifest


def searched_format(backend: str) -> str | None:
    """The backend's export format that writes a compressed sub-network's own per-block weight
    formats (what a joint search on that backend ships); None if it has none."""
    return next((f.name for f in FORMATS.values() if f.backend == backend and f.per_block and not f.weights), None)


def _compression_for(subnet: Any, fmt: Format) -> Any:
    """The per-block weight formats the artifact must carry: the format's own (onnx-int8) or the
    compressed sub-network's; refused where the format cannot write them."""
    from .compression import Compression, schemes_of

    if fmt.weights:
        if subnet.compression is not None:
            base = searched_format(fmt.backend)
            raise ExportError(f"the sub-network carries its own weight formats ({subnet.compression.summary()}); "
                              f"export it with --format {base or 'a per-block format'}, not {fmt.name}")
        return Compression.uniform(fmt.weights, subnet.depth)
    if subnet.compression is None:
        return None
    if not fmt.per_block:
        able = ", ".join(sorted({searched_format(f.backend) for f in FORMATS.values()} - {None})) or "none"
        raise ExportError(f"format {fmt.name} cannot write a sub-network's per-block weight formats "
                          f"({subnet.compression.summary()}); formats that can: {able}")
    subnet.compression.check(schemes_of(fmt.backend), fmt.backend)
    return subnet.compression


def _write_artifact(sn: Any, subnet: Any, fmt: Format, ctx: ExportContext, *, data_dir: Any, measure: bool,
                    prefill: int, decode: int, threads: int, latency_model: Any,
                    say: Callable[[str], None]) -> dict[str, Any]:
    """Everything `export` puts in the (temporary) artifact folder `ctx.out`; returns the manifest."""
    from . import __version__
    from .compression import schemes_of, simulate
    from .modeling import parameter_count

    model, fmt_name = ctx.model, fmt.name
    ids = heldout_tokens(sn.base.tokenizer, data_dir=data_dir)
    reference_model = model
    if ctx.compression is not None:  # verified against the torch simulation of the runtime's numerics
        reference_model = simulate(sn.materialize(subnet.architecture, share_weights=True), ctx.compression,
                                   schemes_of(fmt.backend))
    with torch.no_grad():  # before writing: a format may change the weights (pruning)
        ref = reference_model(input_ids=torch.as_tensor(ids[None])).logits[0, :-1].float().numpy()
        ref_fp32 = ref if reference_model is model else \
            model(input_ids=torch.as_tensor(ids[None])).logits[0, :-1].float().numpy()
    del reference_model
    t0 = time.perf_counter()
    say(f"writing {fmt_name}")
    fmt.write(ctx)
    if not (ctx.out / "config.json").is_file():
        model.config.save_pretrained(ctx.out)
    sn.base.tokenizer.save_pretrained(ctx.out)
    export_s = time.perf_counter() - t0

    say("verifying against torch")
    be, io = open_runtime(ctx.out, {"format": fmt_name}, threads=threads)
    got = stream_logits(be, io, ids)
    verification = compare(ref, got, ids[1:])
    if ref_fp32 is not ref:  # what the compression costs against the fp32 sub-network
        verification["vs_fp32"] = compare(ref_fp32, got, ids[1:])
    top5 = np.argsort(-ref, axis=-1)[:, :5]
    reference = {"tokens": ids.tolist(), "top5_index": top5.tolist(),
                 "top5_logit": np.take_along_axis(ref, top5, -1).round(5).tolist()}
    del be

    measured = None
    if measure:
        say(f"measuring on {fmt.backend}")
        measured = measure_artifact(ctx.out, fmt, prefill=prefill, decode=decode, threads=threads)
    params = parameter_count(model)
    weight_bytes = _runtime_weight_bytes(ctx.out, fmt)
    from .fingerprint import measure_roofline

    roof = measure_roofline(threads=threads)
    bound_ms = weight_bytes / (roof["bandwidth_gbs"] * 1e9) * 1e3
    predicted = None
    if latency_model:
        from .latency import LatencyModel

        lm = LatencyModel.load(latency_model)
        predicted = {k: round(float(v[0]), 3) for k, v in
                     lm.predict_subnets([subnet.compressed(ctx.compression)], prefill=prefill,
                                                  decode=decode).items()}
    files = {p.relative_to(ctx.out).as_posix(): sha256_file(p) for p in sorted(ctx.out.rglob("*"))
             if p.is_file() and p.name != TMP_MARKER}
    manifest = {
        "version": MANIFEST_VERSION,
        "format": fmt_name,
        "description": fmt.description,
        "precision": fmt.precision,
        "backend": fmt.backend,
        "source": {"model": sn.base.spec, "sha256": sn.base.source_hash,
                   "channel_order": sn.order.method if sn.order else None, "dtype": sn.base.dtype},
        "subnet": subnet.to_dict(),
        "compression": ctx.compression.to_dict() if ctx.compression is not None else None,
        "parameters": params,
        "options": ctx.options,
        "files": files,
        "size_mb": round(sum((ctx.out / f).stat().st_size for f in files) / 1e6, 2),
        "verification": {**verification, "reference": reference,
                         "against": f"torch, {sn.base.dtype}" if ctx.compression is None else
                         f"torch simulation of {fmt.backend}'s weight formats ({sn.base.dtype})"},
        "measured": measured,
        "predicted": predicted,
        "roofline": {"bandwidth_gbs": roof["bandwidth_gbs"], "weight_bytes": weight_bytes,
                     "decode_bound_ms": round(bound_ms, 3),
                     "decode_fraction_of_bound": (round(bound_ms / measured["decode_ms_per_token"], 3)
                                                  if measured else None)},
        "versions": {"hwnas": __version__, **_versions(fmt)},
        "export_seconds": round(export_s, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(ctx.out / MANIFEST, manifest)
    return manifest


def _runtime_weight_bytes(folder: Path, fmt: Format) -> int:
    """Bytes of the weight files a decode step streams (`fmt.weight_files`, or every .bin / .onnx /
    .safetensors / .gguf file)."""
    if fmt.weight_files:
        return sum((folder / f).stat().st_size for f in fmt.weight_files if (folder / f).is_file())
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.suffix in (".bin", ".onnx", ".safetensors", ".gguf") or p.name.endswith(".onnx.data"))


def _versions(fmt: Format) -> dict[str, str]:
    from .versions import dist_versions

    return dist_versions("torch", "transformers", *fmt.requires)


def measure_artifact(folder: Path, fmt: Format, *, prefill: int = 128, decode: int = 32,
                     threads: int = 1, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prefill / decode / peak memory of the artifact's own files on its backend, in a clean worker
    process that only loads and runs the artifact (so the peak RSS is the artifact's, not the
    exporting process's). `options`: backend config fields (e.g. `repeats`) on top of the format's."""
    from hwnas.measure.backend import worker_speed_probe
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import run_isolated

    from .bench import bench_tasks

    spec = GraphSpec("model", str(folder))
    config = {"threads": threads, **fmt.backend_config, **(options or {})}
    probe = worker_speed_probe(fmt.backend, config)
    res = run_isolated(fmt.backend, config, spec, bench_tasks(prefill, decode), workdir=folder)
    p, d = res.measurements
    peak = max(p.peak_mem_mb, d.peak_mem_mb, res.peak_mem_mb)
    baseline = res.extra.get("baseline_mb")
    return {"prefill_ms": round(p.median_ms, 3), "decode_ms_per_token": round(d.median_ms, 3),
            "peak_mem_mb": round(peak, 1),
            # the worker's interpreter and libraries (torch, transformers, the runtime) before it loads
            # the artifact, and what loading and running the artifact added on top
            "process_baseline_mb": baseline, "artifact_mem_mb": round(peak - baseline, 1) if baseline else None,
            "cv_prefill": round(p.cv, 4), "cv_decode": round(d.cv, 4), "repeats": min(p.repeats, d.repeats),
            "prefill_tokens": prefill, "decode_tokens": decode, "threads": threads, "device": res.device,
            "load": round(max(p.load, d.load), 3), "probe": probe,
            "flagged": next((m.flag_reason for m in (p, d) if m.flag_reason == "load"), None)
            or next((m.flag_reason for m in (p, d) if m.flagged), None)}


# --- verify and run ---------------------------------------------------------------------------


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise HwnasUserError(f"{folder} is not an hwnas artifact (no {MANIFEST})")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HwnasUserError(f"{path}: not a readable JSON manifest ({type(exc).__name__})") from None
    if not isinstance(m, dict):
        raise HwnasUserError(f"{path}: the manifest must be a JSON object")
    if m.get("version") != MANIFEST_VERSION:
        raise HwnasUserError(f"{path}: manifest version {m.get('version')!r}; this hwnas reads {MANIFEST_VERSION}")
    files = m.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise HwnasUserError(f"{path}: 'files' must map file names to sha256 digests")
    root = Path(folder).resolve()
    for name in files:
        if "\0" in name or not name:
            raise HwnasUserError(f"{path}: file name {name!r} is not a file name")
        target = (root / name).resolve()
        if Path(name).is_absolute() or (target != root and root not in target.parents) or target == root:
            raise HwnasUserError(f"{path}: file {name!r} is outside the artifact folder; refusing to use it")
    fmt = m.get("format")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise HwnasUserError(f"{path}: unknown format {_short(fmt)}; this hwnas knows {', '.join(FORMATS)}")
    ver = m.get("verification")
    if not (isinstance(ver, dict) and isinstance(ver.get("reference"), dict)
            and all(k in ver["reference"] for k in ("tokens", "top5_index", "top5_logit"))):
        raise HwnasUserError(f"{path}: 'verification.reference' (tokens, top5_index, top5_logit) is missing")
    ref = ver["reference"]
    try:
        tokens = np.asarray(ref["tokens"], dtype=np.int64)
        index = np.asarray(ref["top5_index"], dtype=np.int64)
        logit = np.asarray(ref["top5_logit"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        tokens = index = logit = None
    if (tokens is None or tokens.ndim != 1 or len(tokens) < 2 or index.ndim != 2 or index.shape != logit.shape
            or index.shape[0] != len(tokens) - 1 or not np.isfinite(logit).all() or (index < 0).any()
            or (tokens < 0).any()):
        raise HwnasUserError(f"{path}: 'verification.reference' must hold N tokens and N-1 rows of top-5 "
                             "indices and logits")
    for key in ("top1_agreement", "max_abs_diff"):
        v = ver.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v):
            raise HwnasUserError(f"{path}: 'verification.{key}' must be a number")
    return m


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def verify(folder: str | Path, threads: int = 1) -> dict[str, Any]:
    """Re-check every file's sha256 and the runtime's outputs against the stored reference."""
    folder = Path(folder)
    m = read_manifest(folder)
    bad = [f for f, h in m["files"].items() if not (folder / f).is_file() or sha256_file(folder / f) != h]
    ours = {MANIFEST, MARKER, LOCK}
    extra = [p.name for p in folder.iterdir() if p.is_file() and p.name not in ours and p.name not in m["files"]]
    report: dict[str, Any] = {"files_ok": not bad, "changed_or_missing": bad, "unexpected_files": extra}
    if bad:
        report["ok"] = False
        return report
    ref = m["verification"]["reference"]
    ids = np.asarray(ref["tokens"], dtype=np.int64)
    be, io = open_runtime(folder, m, threads=threads)
    got = stream_logits(be, io, ids)
    idx = np.asarray(ref["top5_index"])
    got_top = np.take_along_axis(got, idx, -1)
    agree = float((got.argmax(-1) == idx[:, 0]).mean())
    diff = float(np.abs(got_top - np.asarray(ref["top5_logit"])).max())
    recorded = m["verification"]["top1_agreement"]
    report.update(top1_agreement_vs_reference=agree, max_abs_diff_top5=diff, recorded_top1_agreement=recorded)
    report["ok"] = agree >= recorded - 0.02 and diff <= max(1e-3, 2 * m["verification"]["max_abs_diff"] + 1e-3)
    return report


def generate(folder: str | Path, prompt: str, max_new_tokens: int = 32, threads: int = 1) -> str:
    """Greedy generation with the artifact's runtime (a first smoke test)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    m = read_manifest(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    be, io = open_runtime(folder, m, threads=threads)
    be.load_past(io.make_past(1, 0))
    be.step(torch.as_tensor([ids]))
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(_last_logits(be, io.vocab_size).argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        be.step(torch.as_tensor([[nxt]]))
    return tok.decode(out)

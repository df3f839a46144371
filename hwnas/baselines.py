"""Baselines a user gets without searching, measured side by side with what hwnas ships.

A searched artifact is worth shipping only if it beats what a deployment engineer gets without
hwnas: the base model in each format the runtime runs, the base at a uniform (importance-ordered)
MLP width, the base with its least influential layers dropped (ShortGPT's block influence), each
also in the runtime's compressed formats. `run_baselines` exports every such point with the same
exporter (so verification and files are identical), scores each through its *own runtime* on the
same held-out WikiText-2 windows (a compressed artifact is scored as it ships, not as torch
simulates it), and measures all of them interleaved in rounds in clean worker processes (the order
shuffled per round, so a slow spell of the machine hits every point alike); speed-ups are medians
of per-round ratios to the round's fp32 base, with their range. Extra artifact folders (a searched
result) join the same rounds and are compared with every baseline: which baselines each one
dominates, and which dominate it.

The output folder (`baselines.json`, `baselines.md`, `points/<name>/` artifacts) is documented in
docs/formats.md; re-running reuses finished exports and scores.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bench import interleaved, ratio_spread
from .errors import HwnasUserError
from .subnet import Subnet

VERSION = 1
RESULT = "baselines.json"
TABLE = "baselines.md"


@dataclass(frozen=True)
class Recipe:
    """One way to get a smaller model without a search: its name, kind and sub-network."""

    name: str
    kind: str  # "base" | "uniform-width" | "layer-drop" | "compare" (an artifact given by the user)
    subnet: Subnet


@dataclass
class Point:
    """A recipe in one format, scored and measured."""

    name: str
    kind: str
    format: str
    subnet: dict[str, list[int]]
    folder: str
    params: int = 0
    size_mb: float = 0.0
    ppl: float | None = None  # through the artifact's runtime, on the held-out windows
    ppl_torch: float | None = None  # the fp32 torch sub-network on the same windows
    prefill_ms: list[float] = field(default_factory=list)  # one per round
    decode_ms: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    decode_speedup: dict[str, float] = field(default_factory=dict)  # median / lo / hi over rounds
    prefill_speedup: dict[str, float] = field(default_factory=dict)
    dominates: list[str] = field(default_factory=list)
    dominated_by: list[str] = field(default_factory=list)
    runtime_files: str = ""  # one digest of the files the runtime loads (equal: the same artifact)

    @property
    def label(self) -> str:
        return f"{self.name} {self.format}"


def recipes(sn: Any, *, widths: list[int], drops: list[int]) -> list[Recipe]:
    """The base, the base at each uniform MLP width, and the base minus its k least influential
    droppable layers for each k (the space's droppable layers; needs the order's layer scores)."""
    space = sn.default_space()
    out = [Recipe("base", "base", sn.full_subnet())]
    full = sn.intermediate_size
    for w in widths:
        if not 0 < w <= full:
            raise HwnasUserError(f"--widths: {w} is not between 1 and the model's MLP width {full}")
        out.append(Recipe(f"width-{w}", "uniform-width", Subnet(tuple(range(sn.num_layers)), (w,) * sn.num_layers)))
    scores = sn.order.layer_scores if sn.order is not None else None
    if drops and not scores:
        raise HwnasUserError("--drop needs layer influence scores: use a channel order other than 'none'")
    for k in drops:
        if not 0 < k <= len(space.droppable_layers):
            raise HwnasUserError(f"--drop: {k} is not between 1 and the {len(space.droppable_layers)} layers the "
                                 f"space {space.name} may drop")
        out.append(Recipe(f"drop-{k}", "layer-drop", Subnet.dropping(space, scores, k, full)))
    return out


def backend_formats(backend: str, wanted: list[str] | None = None) -> list[str]:
    """`wanted` (default: every export format measured on this backend whose libraries are
    installed), refused in one line if one of them is not such a format."""
    import importlib.util

    from .export import FORMATS

    avail = sorted((n for n, f in FORMATS.items() if f.backend == backend  # the fp32 one first: the reference
                    and all(importlib.util.find_spec(m) for m in f.requires)), key=lambda n: FORMATS[n].precision != "fp32")
    for f in wanted or []:
        if f not in avail:
            raise HwnasUserError(f"--formats: {f} is not an installed {backend} format; {backend} runs: "
                                 f"{', '.join(avail) or 'none here'}")
    formats = list(wanted) if wanted else avail
    if not formats:
        raise HwnasUserError(f"no export format runs on {backend} here (see `hwnas backends`)")
    return formats


def artifact_perplexity(folder: Path, windows: list[np.ndarray], threads: int = 1) -> float:
    """Perplexity of an exported artifact through its own runtime, token by token through its KV
    cache (every token of each window after the first is scored, as `perplexity` scores a window)."""
    from .evaluate.artifact import ArtifactModel

    art = ArtifactModel(folder, threads=threads)
    scored = [art.window_nll(ids) for ids in windows]
    return math.exp(sum(a for a, _ in scored) / sum(n for _, n in scored))


def torch_perplexity(model: Any, windows: list[np.ndarray]) -> float:
    """The torch model's perplexity on the same (consecutive, equal) windows."""
    import torch

    from .evaluate.perplexity import perplexity

    ids = torch.as_tensor(np.concatenate(windows))
    return perplexity(model, ids, window=len(windows[0]), max_windows=len(windows)).ppl


def heldout_windows(tokenizer: Any, n: int, length: int, data_dir: Any = None) -> list[np.ndarray]:
    """`n` consecutive windows of `length` tokens of the export's held-out text (the second half of
    WikiText-2 test; the search scores the start of it)."""
    from .data import find_data_file
    from .evaluate.perplexity import WIKITEXT2
    from .export import heldout_tokens

    find_data_file(WIKITEXT2, data_dir)  # a missing data folder is an error here, not a fallback sentence
    ids = heldout_tokens(tokenizer, n * length, data_dir)
    if len(ids) < n * length:
        raise HwnasUserError(f"the held-out WikiText-2 text has {len(ids)} tokens; need {n}x{length}")
    return [ids[i * length:(i + 1) * length] for i in range(n)]


def run_baselines(sn: Any, backend: str, out: str | Path, *, formats: list[str] | None = None,
                  widths: list[int] = (1280, 1024, 768), drops: list[int] = (2, 4, 6),
                  compare: list[str | Path] = (), rounds: int = 3, ppl_windows: int = 2, ppl_window: int = 256,
                  prefill: int = 128, decode: int = 32, threads: int = 1, data_dir: Any = None,
                  ppl_tolerance: float = 0.01, seed: int = 0, repeats: int | None = None,
                  reference_base_only: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export, score and measure every baseline (and the `compare` artifacts) on `backend`; write
    `baselines.json` and `baselines.md` into `out` and return the result. `reference_base_only`:
    the first format (the fp32 reference) only for the base, the pruned recipes only in the
    others (a shorter run: pruned fp32 points lose to the base's compressed ones here)."""
    from .export import FORMATS, export, measure_artifact, read_manifest
    from .fileio import write_json, write_text
    from .outdir import claim_dir, exclusive

    say = progress or (lambda _m: None)
    formats = backend_formats(backend, formats)
    out = claim_dir(out, "baselines")
    windows = heldout_windows(sn.base.tokenizer, ppl_windows, ppl_window, data_dir)
    previous = {}
    if (out / RESULT).is_file():
        try:  # what an earlier (maybe interrupted) run finished; anything unreadable is redone
            previous = {(p["name"], p["format"]): p for p in json.loads((out / RESULT).read_text())["points"]}
        except (ValueError, KeyError, TypeError):
            previous = {}
    with exclusive(out, "baselines"):
        points: list[Point] = []
        for r in recipes(sn, widths=list(widths), drops=list(drops)):
            torch_ppl = None
            for fmt in formats:
                if reference_base_only and r.kind != "base" and fmt == formats[0] and len(formats) > 1:
                    continue
                folder = out / "points" / f"{r.name}-{fmt}"
                p = Point(r.name, r.kind, fmt, r.subnet.to_dict(), str(folder))
                done = previous.get((r.name, fmt))
                m = read_manifest(folder) if done and done.get("ppl") and (folder / "manifest.json").is_file() \
                    else None
                if m is None or m.get("subnet") != p.subnet:
                    say(f"exporting {p.label}")
                    m = export(sn, r.subnet, fmt, folder, data_dir=data_dir, measure=False, threads=threads)
                    say(f"scoring {p.label} through {backend} ({ppl_windows}x{ppl_window} tokens)")
                    p.ppl = artifact_perplexity(folder, windows, threads)
                    if torch_ppl is None:
                        torch_ppl = torch_perplexity(sn.materialize(r.subnet, share_weights=True), windows)
                    p.ppl_torch = torch_ppl
                else:
                    p.ppl, p.ppl_torch = done["ppl"], done["ppl_torch"]
                    torch_ppl = p.ppl_torch
                p.params, p.size_mb = m["parameters"], m["size_mb"]
                p.runtime_files = runtime_digest(folder, m)
                points.append(p)
                write_json(out / RESULT, _result(sn, backend, points, windows, rounds, prefill, decode, threads,
                                                 repeats, partial=True))
        for c in compare:
            folder = Path(c)
            m = read_manifest(folder)
            if FORMATS[m["format"]].backend != backend:
                raise HwnasUserError(f"--compare {folder}: a {m['format']} artifact runs on "
                                     f"{FORMATS[m['format']].backend}, not {backend}")
            p = Point(folder.name, "compare", m["format"], m["subnet"], str(folder), params=m["parameters"],
                      size_mb=m["size_mb"], runtime_files=runtime_digest(folder, m))
            say(f"scoring {p.label} through {backend}")
            p.ppl = artifact_perplexity(folder, windows, threads)
            p.ppl_torch = torch_perplexity(sn.materialize(Subnet.from_dict(m["subnet"]), share_weights=True),
                                           windows)
            points.append(p)
        def measure(i: int, rnd: int) -> None:
            p = points[i]
            say(f"round {rnd + 1}/{rounds}: measuring {p.label}")
            ms = measure_artifact(Path(p.folder), FORMATS[p.format], prefill=prefill, decode=decode,
                                  threads=threads, options={"repeats": repeats} if repeats else None)
            p.prefill_ms.append(ms["prefill_ms"])
            p.decode_ms.append(ms["decode_ms_per_token"])
            p.peak_mb.append(ms["peak_mem_mb"])
            p.loads.append(ms["load"])

        # the noise floor of this run: the first compressed base (the recipe to beat) measured twice
        # per round, as two points; a ratio between two points means something only beyond it
        twinned = next((p for p in points if p.kind == "base" and p.format != formats[0]), points[0])
        points.append(Point(twinned.name, "twin", twinned.format, twinned.subnet, twinned.folder, twinned.params,
                            twinned.size_mb, twinned.ppl, twinned.ppl_torch, runtime_files=twinned.runtime_files))
        interleaved(range(len(points)), rounds, measure, seed=seed)
        margin = _compare(points, formats[0], ppl_tolerance)
        result = _result(sn, backend, points, windows, rounds, prefill, decode, threads, repeats, partial=False)
        result["ppl_tolerance"] = ppl_tolerance
        result["noise_margin"] = round(margin, 4)
        write_json(out / RESULT, result)
        write_text(out / TABLE, table(result))
    return result


def runtime_digest(folder: Path, manifest: dict[str, Any]) -> str:
    """One digest of the files an artifact's runtime loads (from the manifest's sha256 of each):
    two artifacts with equal digests are the same network in the same format, whatever their names."""
    import hashlib

    from .export import FORMATS

    fmt = FORMATS[manifest["format"]]
    files = manifest.get("files", {})
    names = [n for n in files if n in fmt.weight_files or (not fmt.weight_files and n.endswith(RUNTIME_SUFFIXES))]
    return hashlib.sha256(json.dumps(sorted((n, files[n]) for n in names)).encode()).hexdigest()[:16]


RUNTIME_SUFFIXES = (".onnx", ".onnx.data", ".xml", ".bin", ".gguf", ".safetensors")


def noise_margin(twin_ratios: Sequence[float]) -> float:
    """How far from 1 the per-round decode ratio of an artifact to *itself* (measured twice per
    round, as two points) went in this run: a ratio between two points is a difference only
    beyond it."""
    return max((abs(r - 1) for r in twin_ratios), default=0.0)


def _compare(points: list[Point], reference_format: str, tol: float) -> float:
    """Speed-ups vs the fp32 base of each round, the run's noise margin (`noise_margin` of the twin
    point, if measured), and dominance: a point dominates another when it is at least as accurate
    (ppl within `tol`) and faster in every round by more than the noise margin. Returns the margin."""
    ref = next(p for p in points if p.kind == "base" and p.format == reference_format)
    for p in points:
        p.decode_speedup = ratio_spread([b / a for a, b in zip(p.decode_ms, ref.decode_ms)])
        p.prefill_speedup = ratio_spread([b / a for a, b in zip(p.prefill_ms, ref.prefill_ms)])
    twin = next((p for p in points if p.kind == "twin"), None)
    margin = 0.0
    if twin is not None:
        orig = next(p for p in points if p.kind == "base" and p.folder == twin.folder)
        margin = noise_margin([b / a for a, b in zip(twin.decode_ms, orig.decode_ms)])
    for a in points:
        for b in points:
            if a is b or "twin" in (a.kind, b.kind) or b.kind == "compare" and a.kind == "compare":
                continue
            if a.ppl <= b.ppl * (1 + tol) and all(y / x > 1 + margin for x, y in zip(a.decode_ms, b.decode_ms)):
                a.dominates.append(b.label)
                b.dominated_by.append(a.label)
    return margin


def _result(sn: Any, backend: str, points: list[Point], windows: list[np.ndarray], rounds: int, prefill: int,
            decode: int, threads: int, repeats: int | None, *, partial: bool) -> dict[str, Any]:
    from .fingerprint import cpu_model

    return {"version": VERSION, "model": sn.base.spec, "backend": backend, "device": f"cpu:{cpu_model()}",
            "channel_order": sn.order.method if sn.order else None, "partial": partial,
            "eval": {"data": "wikitext2 test, second half", "windows": len(windows), "window": len(windows[0])},
            "measure": {"rounds": rounds, "prefill_tokens": prefill, "decode_tokens": decode, "threads": threads,
                        "repeats": repeats},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "points": [asdict(p) for p in points]}


def table(result: dict[str, Any]) -> str:
    """The Markdown table of a baselines result (what `hwnas baselines` prints)."""
    ev, ms = result["eval"], result["measure"]
    lines = [f"# Baselines: {result['model']} on {result['backend']} ({result['device']})", "",
             f"Perplexity: WikiText-2 test second half, {ev['windows']}x{ev['window']} tokens, through each "
             f"artifact's runtime (torch fp32 of the same sub-network beside it). Latency: prefill "
             f"{ms['prefill_tokens']} tokens, decode at that context, {ms['threads']} thread(s), {ms['rounds']} "
             "interleaved rounds in clean workers: medians with the range over rounds; speed-ups are medians "
             "of per-round ratios to the fp32 base.", "",
             "| point | format | params M | size MB | ppl (runtime) | ppl (torch) | prefill ms | decode ms/token | "
             "decode speed-up | peak MB | dominated by |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(result["points"], key=lambda p: statistics.median(p["decode_ms"]) if p["decode_ms"] else 0):
        dec, pre = p["decode_ms"], p["prefill_ms"]
        s = p["decode_speedup"]
        lines.append(
            f"| {p['name']}{LABEL_SUFFIX.get(p['kind'], '')} | {p['format']} | {p['params'] / 1e6:.1f} | "
            f"{p['size_mb']:.0f} | {p['ppl']:.2f} | {p['ppl_torch']:.2f} | "
            f"{statistics.median(pre):.1f} ({min(pre):.1f}-{max(pre):.1f}) | "
            f"{statistics.median(dec):.2f} ({min(dec):.2f}-{max(dec):.2f}) | "
            f"{s['median']:.2f}x ({s['lo']:.2f}-{s['hi']:.2f}) | {statistics.median(p['peak_mb']):.0f} | "
            f"{', '.join(p['dominated_by']) or '-'} |")
    lines += ["", *verdicts(result)]
    if "noise_margin" in result:
        lines.append(f"- noise: the twin (one artifact measured as two points each round) decoded within "
                     f"±{result['noise_margin']:.1%} of itself; a speed difference is claimed only beyond that.")
    return "\n".join(lines) + "\n"


LABEL_SUFFIX = {"compare": " (compared)", "twin": " (noise twin)"}


def verdicts(result: dict[str, Any]) -> list[str]:
    """One line per compared artifact: the fastest baseline at least as accurate as it (ppl within
    the tolerance), the decode ratio between them per round, and what dominates it."""
    tol = result.get("ppl_tolerance", 0.01)
    margin = result.get("noise_margin", 0.0)
    pts = result["points"]
    base = [p for p in pts if p["kind"] not in ("compare", "twin")]
    out = []
    for c in (p for p in pts if p["kind"] == "compare"):
        head = f"- {c['name']} ({c['format']}, ppl {c['ppl']:.2f}, decode {statistics.median(c['decode_ms']):.2f} ms/token): "
        same = [b for b in base if c.get("runtime_files") and b.get("runtime_files") == c["runtime_files"]]
        if same:
            b = same[0]
            r = [y / x for x, y in zip(c["decode_ms"], b["decode_ms"])]
            out.append(head + f"the same artifact as the baseline {b['name']} {b['format']} (identical runtime files): "
                       f"the search found nothing better than that recipe; the decode ratio measured between the two "
                       f"copies, {statistics.median(r):.2f}x (rounds {min(r):.2f}-{max(r):.2f}), is noise.")
            continue
        peers = [b for b in base if b["ppl"] <= c["ppl"] * (1 + tol)]
        if not peers:
            out.append(head + "no baseline is as accurate; " + _vs_best(c, base))
            continue
        best = min(peers, key=lambda b: statistics.median(b["decode_ms"]))
        r = [b / a for a, b in zip(c["decode_ms"], best["decode_ms"])]
        word = ("faster than" if min(r) > 1 + margin else "slower than" if max(r) < 1 - margin
                else "within the noise of")
        out.append(head + f"the fastest baseline at least as accurate is {best['name']} {best['format']} "
                   f"(ppl {best['ppl']:.2f}, decode {statistics.median(best['decode_ms']):.2f}); the compared "
                   f"artifact decodes {statistics.median(r):.2f}x its speed (rounds {min(r):.2f}-{max(r):.2f}; "
                   f"noise ±{margin:.1%}): {word} it. Dominated by: {', '.join(c['dominated_by']) or 'none'}.")
    return out


def _vs_best(c: dict[str, Any], base: list[dict[str, Any]]) -> str:
    best = min(base, key=lambda b: b["ppl"])
    return (f"the most accurate baseline is {best['name']} {best['format']} (ppl {best['ppl']:.2f}, "
            f"decode {statistics.median(best['decode_ms']):.2f} ms/token).")

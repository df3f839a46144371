"""LightGBM latency model: lookup-table features + measured whole sub-networks -> prefill ms,
decode ms/token and peak memory on one device profile.

Features of a sub-network (per phase): the device profile's operator-time sums (attention, MLP at
each kept layer's width, head) at the phase's token count / context, roofline bounds from the
profile's fingerprint (bytes / bandwidth, FLOPs / peak), depth, width statistics, batch, prefill
length and decode context. One LightGBM regressor per target is trained on sub-networks measured
with the `bench` path; it predicts either log(measured / lookup-table sum) ("ratio") or
log(measured) ("raw"). A third candidate, "linear", is a least-squares calibration of the
lookup-table sum (measured = slope * sum + intercept) with no booster: with a few dozen noisy
samples it often generalizes better than any tree model (measured on SmolLM2/ORT: decode MAPE on 30
held-out sub-networks 4.8 % vs 8.0 % for LightGBM). Whichever cross-validates best is kept and recorded.

A fitted model is a folder (`docs/formats.md`): `latency_model.yaml` (features, targets, profile
id, device, versions), one LightGBM text file per target, and the measured samples
(`samples.jsonl`, `validation.jsonl`). It refuses a profile or device it was not fitted for.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import metrics
from .compression import Compression
from .errors import HwnasUserError, is_int
from .fileio import append_jsonl, read_jsonl, write_text, write_yaml
from .modeling import ParamCounter
from .profile import HEADER_FILE, LUT_FILE, DeviceProfile
from .shape import ModelShape
from .space import SearchSpace
from .subnet import Subnet

MODEL_VERSION = 1
HEADER = "latency_model.yaml"
TARGETS = metrics.names("measured")  # what a latency model predicts: every measured metric (`hwnas.metrics`)
FEATURES = ("lut_sum", "lut_attn", "lut_mlp", "lut_head", "roof_bytes_ms", "roof_flops_ms", "weight_mb",
            "kv_mb", "depth", "width_mean", "width_min", "width_max", "width_std", "batch", "tokens", "context")
MODES = ("ratio", "raw", "linear")


class LatencyModelError(HwnasUserError):
    """A latency model is missing, malformed, or used with a profile/device it was not fitted for."""


def profile_id(folder: str | Path) -> str:
    """Identity of a device profile: hash of its lookup table and its header's identity fields."""
    folder = Path(folder)
    h = hashlib.sha256((folder / LUT_FILE).read_bytes())
    header = yaml.safe_load((folder / HEADER_FILE).read_text()) or {}
    for k in ("backend", "model", "threads", "device_slug"):
        h.update(f"{k}={header.get(k)}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class Shape:
    """What the features need to know about the base model."""

    hidden: int
    kv_heads: int
    head_dim: int
    num_layers: int
    counter: ParamCounter

    @classmethod
    def of(cls, config) -> Shape:
        s = ModelShape.of(config)
        return cls(s.hidden, s.kv_heads, s.head_dim, s.layers, ParamCounter(config))


class FeatureBuilder:
    """Vectorised features for many sub-networks at one (phase, tokens, context, batch)."""

    def __init__(self, profile: DeviceProfile, shape: Shape, widths: Sequence[int]) -> None:
        self.profile, self.shape = profile, shape
        self.widths = np.asarray(sorted(set(widths)))
        roof = (profile.header.get("fingerprint") or {}).get("roofline") or {}
        self.bandwidth_gbs = float(roof.get("bandwidth_gbs") or 0) or None
        self.peak_gflops = float(roof.get("peak_gflops") or 0) or None
        self._cache: dict[tuple, tuple[float, float, np.ndarray]] = {}

    def _lut(self, phase: str, tokens: int, context: int, batch: int,
             fmt: str = "fp32") -> tuple[float, float, np.ndarray]:
        key = (phase, tokens, context, batch, fmt)
        if key not in self._cache:
            kw = {"tokens": tokens, "context": context, "batch": batch, "format": fmt}
            try:
                attn = self.profile.lookup("attention", phase, **kw)
                head = self.profile.lookup("head", phase, **kw)
                mlp = np.asarray([self.profile.lookup("mlp", phase, width=int(w), **kw) for w in self.widths])
            except HwnasUserError as exc:
                raise LatencyModelError(f"the device profile cannot time weight format {fmt}: {exc}") from exc
            self._cache[key] = (attn, head, mlp)
        return self._cache[key]

    def build(self, keep: np.ndarray, widths: np.ndarray, phase: str, tokens: int, context: int,
              batch: int, formats: Formats | None = None) -> np.ndarray:
        """(n, len(FEATURES)) for rows of a keep mask and per-layer widths (and weight formats:
        each block's lookup-table entry in its own format)."""
        idx = np.searchsorted(self.widths, widths)
        if (idx >= len(self.widths)).any() or (self.widths[np.minimum(idx, len(self.widths) - 1)] != widths)[keep].any():
            missing = sorted(set(widths[keep].tolist()) - set(self.widths.tolist()))
            raise LatencyModelError(f"MLP widths {missing} are not in the device profile's grid")
        idx = np.minimum(idx, len(self.widths) - 1)
        depth = keep.sum(1).astype(float)
        if plain(formats):
            attn, head, mlp = self._lut(phase, tokens, context, batch)
            lut_mlp = np.where(keep, mlp[idx], 0.0).sum(1)
            lut_attn = depth * attn
            head = np.full(len(keep), head)
            weight_bytes = self.shape.counter.weight_bytes(keep, widths).astype(float)
        else:
            f_attn, f_mlp, _f_embed, f_head = formats
            lut_attn, lut_mlp, head = np.zeros(len(keep)), np.zeros(len(keep)), np.zeros(len(keep))
            for fmt in set(np.concatenate([f_attn[keep], f_mlp[keep], f_head]).tolist()):
                a, h, m = self._lut(phase, tokens, context, batch, fmt)
                lut_attn += (keep & (f_attn == fmt)).sum(1) * a
                lut_mlp += np.where(keep & (f_mlp == fmt), m[idx], 0.0).sum(1)
                head += np.where(f_head == fmt, h, 0.0)
            weight_bytes = self.shape.counter.weight_bytes(keep, widths, format_bits(formats)).astype(float)
        lut_sum = lut_attn + lut_mlp + head
        params = self.shape.counter.params(keep, widths).astype(float)
        kv_ctx = tokens if phase == "prefill" else context
        kv_bytes = 2.0 * depth * self.shape.kv_heads * self.shape.head_dim * kv_ctx * 4.0 * batch
        n_tok = tokens * batch if phase == "prefill" else batch
        flops = 2.0 * params * n_tok
        roof_bytes = (weight_bytes + kv_bytes) / (self.bandwidth_gbs * 1e9) * 1e3 if self.bandwidth_gbs else np.zeros_like(params)
        roof_flops = flops / (self.peak_gflops * 1e9) * 1e3 if self.peak_gflops else np.zeros_like(params)
        kept_w = np.where(keep, widths, np.nan).astype(float)
        feats = np.column_stack([
            lut_sum, lut_attn, lut_mlp, head, roof_bytes, roof_flops, weight_bytes / 1e6,
            kv_bytes / 1e6, depth, np.nanmean(kept_w, 1), np.nanmin(kept_w, 1), np.nanmax(kept_w, 1),
            np.nanstd(kept_w, 1), np.full_like(params, batch), np.full_like(params, tokens),
            np.full_like(params, context)])
        return feats


Formats = tuple  # (attention (pop, layers), MLP (pop, layers), embedding (pop,), head (pop,)) format names


def subnet_arrays(subnets: Sequence[Subnet], num_layers: int, with_formats: bool = False) -> tuple:
    """Keep mask and per-layer widths of sub-networks; with `with_formats`, also their weight
    formats (`Formats`; fp32 for dropped layers and uncompressed sub-networks)."""
    keep = np.zeros((len(subnets), num_layers), dtype=bool)
    widths = np.zeros((len(subnets), num_layers), dtype=np.int64)
    attn = np.full((len(subnets), num_layers), "fp32", dtype=object)
    mlp, embed, head = attn.copy(), np.full(len(subnets), "fp32", dtype=object), np.full(len(subnets), "fp32", dtype=object)
    for r, s in enumerate(subnets):
        keep[r, list(s.layers)] = True
        widths[r, list(s.layers)] = s.mlp_widths
        if s.compression is not None:
            attn[r, list(s.layers)] = s.compression.attn
            mlp[r, list(s.layers)] = s.compression.mlp
            embed[r], head[r] = s.compression.embed, s.compression.head
    return (keep, widths, (attn, mlp, embed, head)) if with_formats else (keep, widths)


def format_bits(formats: Formats) -> tuple[np.ndarray, ...]:
    """Bits per weight of each entry of `Formats`."""
    from .compression import bits_of

    return tuple(np.vectorize(lambda f: bits_of(f) or 32, otypes=[float])(a) for a in formats)


def plain(formats: Formats | None) -> bool:
    return formats is None or all((a == "fp32").all() for a in formats)


def phase_settings(target: str, prefill: int, decode: int, batch: int) -> tuple[str, int, int, int]:
    """(phase, tokens, context, batch) whose lookup-table entries describe a bench measurement."""
    if metrics.METRICS[target].phase == "decode":
        return "decode", 1, prefill + decode // 2, batch  # decode steps run at contexts prefill..prefill+decode
    return "prefill", prefill, 0, batch  # peak memory: prefill-time features (+ kv at that length)


def _check_header(header: dict[str, Any], path: Path) -> None:
    """The fields `LatencyModel` reads, with their types: a hand-edited or cut header is refused with
    one line instead of failing somewhere inside a prediction."""
    def fail(what: str) -> LatencyModelError:
        return LatencyModelError(f"{path}: {what}; fit the model again with `hwnas latency fit`")

    missing = [k for k in ("model", "profile_path", "profile_id", "widths", "targets") if k not in header]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    for k in ("model", "profile_path", "profile_id"):
        if not isinstance(header[k], str) or not header[k]:
            raise fail(f"{k} must be text")
    widths = header["widths"]
    if not isinstance(widths, list) or not widths or not all(
            is_int(w) and w > 0 for w in widths):
        raise fail("widths must be a list of positive integers")
    targets = header["targets"]
    if not isinstance(targets, dict) or not targets or not set(targets) <= set(TARGETS):
        raise fail(f"targets must map some of {', '.join(TARGETS)} to their fitted models")
    for t, spec in targets.items():
        if not isinstance(spec, dict) or spec.get("mode") not in MODES:
            raise fail(f"target {t}: mode must be one of {', '.join(MODES)}")
        if spec["mode"] == "linear":
            if not all(isinstance(spec.get(k), (int, float)) and not isinstance(spec.get(k), bool)
                       for k in ("slope", "intercept")):
                raise fail(f"target {t}: a linear mode needs numbers slope and intercept")
        elif not (isinstance(spec.get("file"), str) and spec["file"] and Path(spec["file"]).name == spec["file"]):
            raise fail(f"target {t}: file must name a model file inside the folder")


def _booster(folder: Path, name: str, target: str) -> Any:  # lightgbm.Booster
    path = folder / name
    if not path.is_file():
        raise LatencyModelError(f"latency model {folder}: {name} (target {target}) is missing; fit the model again "
                                "with `hwnas latency fit`")
    try:
        return load_booster(model_file=str(path))
    except ValueError as exc:
        raise LatencyModelError(f"latency model {folder}: {name} is not a LightGBM model text file; fit the model "
                                "again with `hwnas latency fit`") from exc


def load_booster(*, model_file: str | None = None, model_str: str | None = None) -> Any:
    """A LightGBM booster from its text format; a malformed one is a ValueError. LightGBM writes
    '[LightGBM] [Fatal] ...' straight to the process's stderr before raising; that line is kept off
    the terminal (the caller's one-line error says it better)."""
    import contextlib
    import sys

    import lightgbm as lgb

    if model_file is not None:
        with open(model_file, "rb") as f:
            head = f.read(4)
    else:
        head = (model_str or "")[:4].encode()
    if head != b"tree":  # every LightGBM text model starts with the line `tree`
        raise ValueError("not a LightGBM text model")
    with contextlib.ExitStack() as stack:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            stack.callback(os.close, saved)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
            stack.callback(os.dup2, saved, 2)
        except (OSError, ValueError):  # no real stderr (embedded): let LightGBM print
            pass
        try:
            return lgb.Booster(model_file=model_file) if model_file is not None else lgb.Booster(model_str=model_str)
        except lgb.basic.LightGBMError as exc:
            raise ValueError(str(exc)) from exc


class LatencyModel:
    """Fitted regressors for one device profile; `predict_*` are vectorised."""

    def __init__(self, folder: Path, header: dict[str, Any], profile: DeviceProfile, shape: Shape) -> None:
        self.folder, self.header, self.profile = folder, header, profile
        self.features = FeatureBuilder(profile, shape, header["widths"])
        self.shape = shape
        self.boosters = {t: _booster(folder, spec["file"], t) for t, spec in header["targets"].items()
                         if spec.get("file")}

    @property
    def profile_id(self) -> str:
        return self.header["profile_id"]

    @property
    def bandwidth_gbs(self) -> float | None:
        return self.features.bandwidth_gbs

    @classmethod
    def load(cls, folder: str | Path, profile: str | Path | None = None) -> LatencyModel:
        from .fileio import read_yaml_file
        from .model import load_config

        folder = Path(folder)
        path = folder / HEADER
        if not folder.is_dir():
            raise LatencyModelError(f"latency model folder not found: {folder}; fit one with `hwnas latency fit`")
        if not path.is_file():
            raise LatencyModelError(f"{folder} is not a latency model (no {HEADER}); fit one with `hwnas latency fit`")
        header = read_yaml_file(path, "latency model header", LatencyModelError)
        if not isinstance(header, dict):
            raise LatencyModelError(f"{path}: must be a YAML mapping; fit the model again with `hwnas latency fit`")
        if header.get("version") != MODEL_VERSION:
            raise LatencyModelError(f"{path}: version {header.get('version')!r}; this hwnas reads {MODEL_VERSION}")
        _check_header(header, path)
        prof_dir = Path(profile) if profile else folder / header["profile_path"]  # relative to the model folder
        if not (prof_dir / HEADER_FILE).is_file():
            raise LatencyModelError(f"the device profile {prof_dir} of latency model {folder} is missing; "
                                    "pass --profile with its location")
        prof = DeviceProfile.load(prof_dir)
        pid = profile_id(prof_dir)
        if pid != header["profile_id"]:
            raise LatencyModelError(
                f"latency model {folder} was fitted on device profile {header['profile_id']} "
                f"({header.get('device_slug')}, {header.get('backend')}), not on {prof_dir} ({pid}): "
                "refit it for this profile")
        shape = Shape.of(load_config(header["model"]))
        return cls(folder, header, prof, shape)

    def predict_arrays(self, keep: np.ndarray, widths: np.ndarray, *, prefill: int = 128, decode: int = 32,
                       batch: int = 1, targets: Sequence[str] | None = None,
                       formats: Formats | None = None) -> dict[str, np.ndarray]:
        """Predictions for rows of a keep mask and per-layer widths, and weight formats (only
        `targets`, if given)."""
        out = {}
        feats: dict[tuple, np.ndarray] = {}  # targets that share a phase share its features
        for t in targets or self.header["targets"]:
            spec = self.header["targets"][t]
            key = phase_settings(t, prefill, decode, batch)
            if key not in feats:
                feats[key] = self.features.build(keep, widths, *key, formats=formats)
            x = feats[key]
            if spec["mode"] == "linear":
                out[t] = spec["slope"] * x[:, 0] + spec["intercept"]
                continue
            y = self.boosters[t].predict(x, num_threads=1)
            out[t] = np.exp(y) * x[:, 0] if spec["mode"] == "ratio" else np.exp(y)
        return out

    def predict_subnets(self, subnets: Sequence[Subnet], *, prefill: int = 128, decode: int = 32,
                        batch: int = 1, targets: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        keep, widths, formats = subnet_arrays(subnets, self.shape.num_layers, with_formats=True)
        return self.predict_arrays(keep, widths, prefill=prefill, decode=decode, batch=batch, targets=targets,
                                   formats=None if plain(formats) else formats)

    def at_speed(self, pred: dict[str, np.ndarray], probe: dict[str, Any]) -> dict[str, np.ndarray]:
        """Predictions (made at the profile's speed: the model is fitted on normalized samples)
        rescaled to the machine speed a probe measured (`hwnas.measure.backend.speed_probe`)."""
        f = speed_factors(probe, self.header.get("roofline"))
        return {t: v / f.get(t, 1.0) for t, v in pred.items()}

    def lut_sums(self, subnets: Sequence[Subnet], *, prefill: int = 128, decode: int = 32,
                 batch: int = 1) -> dict[str, np.ndarray]:
        """The plain lookup-table sums (the baseline the model improves on)."""
        keep, widths, formats = subnet_arrays(subnets, self.shape.num_layers, with_formats=True)
        out = {}
        for t in (t for t in TARGETS if metrics.METRICS[t].additive):
            phase, tokens, context, b = phase_settings(t, prefill, decode, batch)
            out[t] = self.features.build(keep, widths, phase, tokens, context, b, formats=formats)[:, 0]
        return out


# --- measuring and fitting --------------------------------------------------------------------


# a probe below 0.25x (or above 4x) of the profile's roofline: another device, not a slower day of this
# one (two hosts of one VM type measured 37 and 14 GB/s: 0.38x, which normalization covers)
SPEED_TOLERANCE = 0.25


# within +-25 % of the profile's figure a probe is not acted on. Measured (docs/results.md, "Where the
# noise comes from"): on a quiet machine the per-measurement probe read 0.83-1.03x (bandwidth) and
# 0.97-1.17x (GEMM) of the profile's while the timings did not follow, and normalizing inside that
# range doubled the re-measurement noise (decode MAPE 5.0 -> 9.8 %); a bandwidth hog slowed decode 3.7 %
# without moving it. Hosts of one VM type differed 2.6x: that is what normalization is for.
SPEED_DEADBAND = 0.25


def speed_factors(probe: dict[str, Any] | None, reference: dict[str, Any] | None,
                  deadband: float = SPEED_DEADBAND) -> dict[str, float]:
    """Per measured metric, the factor that brings a measurement taken at `probe`'s machine speed to
    `reference`'s (the profile's): a time scales inversely with its metric's `speed` figure
    (`hwnas.metrics`), so measured x probe / reference. 1.0 where either lacks the figure, and inside
    the dead band (`SPEED_DEADBAND`), where normalizing would add the probe's noise."""
    out = {}
    for t in TARGETS:
        key = metrics.METRICS[t].speed
        now, ref = (probe or {}).get(key), (reference or {}).get(key)
        f = float(now) / float(ref) if key and now and ref else 1.0
        out[t] = f if abs(f - 1.0) > deadband else 1.0
    return out


def normalized(rec: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """A measurement record at the reference speed (its targets x `speed_factors` of its own probe);
    `raw` keeps what was measured. Records without a probe (older files) are returned as they are."""
    f = speed_factors(rec.get("probe"), reference)
    if all(v == 1.0 for v in f.values()):
        return rec
    return {**rec, **{t: round(float(rec[t]) * f[t], 4) for t in TARGETS}, "raw": {t: rec[t] for t in TARGETS},
            "speed_factor": {t: round(v, 4) for t, v in f.items()}}


def check_same_device(profile: DeviceProfile, *, speed: bool = True) -> dict[str, Any] | None:
    """Measurements for a profile must come from the device it describes.

    The fingerprint's name (CPU model, cores) is not enough: cloud hosts of one instance type
    differ (measured here: two sessions' 2-core "AMD EPYC" VMs streamed 37 and 14 GB/s), and a
    busy machine measures slow. With `speed`, a short roofline probe (~2 s) is compared with the
    one the profile recorded; far off, measuring is refused. Returns the probe's comparison."""
    from .fingerprint import fingerprint, measure_roofline

    here = fingerprint(roofline=False).slug
    there = profile.header.get("device_slug")
    if there and here != there:
        raise LatencyModelError(f"the profile was recorded on '{there}' but this machine is '{here}': "
                                "measure on that device, or profile this one with `hwnas profile`")
    recorded = (profile.header.get("fingerprint") or {}).get("roofline") or {}
    if not speed or not recorded.get("bandwidth_gbs") or not recorded.get("peak_gflops"):
        return None
    now = measure_roofline(threads=int(recorded.get("threads") or 1))
    ratio = {k: round(now[k] / float(recorded[k]), 3) for k in ("bandwidth_gbs", "peak_gflops")}
    if any(not SPEED_TOLERANCE <= r <= 1 / SPEED_TOLERANCE for r in ratio.values()):
        raise LatencyModelError(
            f"this machine does not run at the profile's speed: memory bandwidth {now['bandwidth_gbs']} GB/s "
            f"and GEMM {now['peak_gflops']} GFLOP/s now, {recorded['bandwidth_gbs']} and {recorded['peak_gflops']} "
            f"when the profile was recorded (x{ratio['bandwidth_gbs']}, x{ratio['peak_gflops']}). Another host "
            "of the same type, or a busy machine: timings taken now would not match the profile's lookup "
            "table. Profile this machine (`hwnas profile`), measure when it is idle, or pass "
            "--skip-speed-check to measure anyway")
    return {"recorded": {k: recorded[k] for k in ratio}, "now": {k: now[k] for k in ratio}, "ratio": ratio}


def _read_rounds(path: Path, settings: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Measurements in a samples file, per sub-network key (one line per measurement round)."""
    have: dict[str, list[dict[str, Any]]] = {}
    for rec in read_jsonl(path):  # a line cut short by a kill is skipped (that round is redone)
        if rec.get("settings") != settings:
            continue
        key = Subnet.from_dict(rec.get("subnet"), source=f"{path}: record").key()
        have.setdefault(key, []).append(rec)
    return have


def combine_rounds(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One sample from its measurement rounds: the median of each target over the rounds (each round
    a separate worker process at a different time); `round_values` keeps the single rounds."""
    out = dict(recs[0])
    out.pop("round", None)
    out["rounds"] = len(recs)
    if len(recs) > 1:
        out["round_values"] = {t: [float(r[t]) for r in recs] for t in TARGETS}
        for t in TARGETS:
            out[t] = round(float(np.median(out["round_values"][t])), 3)
        out["load"] = max(float(r.get("load", 0.0)) for r in recs)
    return out


def measure_samples(path: Path, subnets: Sequence[Subnet], profile: DeviceProfile, *, prefill: int, decode: int,
                    batch: int, rounds: int = 1, progress: Callable[[int, int], None] | None = None,
                    isolate: bool = True, normalize: bool = True) -> list[dict[str, Any]]:
    """Bench each sub-network `rounds` times (one worker process each, a speed probe just before)
    unless `path` (JSONL, one line per measurement, as measured) already has them; returns one
    combined record per sub-network, each round first brought to the profile's speed by its probe
    (`normalized`; `normalize=False`: as measured).

    Rounds are interleaved (every sub-network once, then every one again), so slow drift of the
    machine (other tenants, frequency, a neighbour's job) spreads over all samples instead of
    biasing the ones measured during it; the median over rounds also discards one-off outliers."""
    from .bench import bench_subnet

    settings = {"prefill": prefill, "decode": decode, "batch": batch}
    have = _read_rounds(path, settings)
    dtype = profile.header.get("dtype", "fp32")  # profiles from before dtypes: fp32
    mixed = sorted({r.get("dtype", "fp32") for recs in have.values() for r in recs} - {dtype})
    if mixed:
        raise LatencyModelError(f"{path} holds measurements of the model loaded in {', '.join(mixed)}; the profile "
                                f"was taken in {dtype}: fit into another --out (dtypes are never mixed)")
    todo = sum(max(0, rounds - len(have.get(s.key(), []))) for s in subnets)
    done, busy = 0, []
    for r in range(rounds):
        for s in subnets:
            got = have.setdefault(s.key(), [])
            if len(got) > r:
                continue
            res = bench_subnet(profile.header["model"], s.to_dict(), profile.backend, prefill=prefill, decode=decode,
                               batch=batch, threads=int(profile.header.get("threads", 1)),
                               config=profile.header.get("backend_config") or None, isolate=isolate, dtype=dtype)
            if res.flag_reason == "load":  # never stored: a resumed run measures it again
                busy.append(res.load)
                continue
            rec = {"subnet": s.to_dict(), "settings": settings, "round": len(got),
                   **{k: v for k, v in res.to_dict().items() if k != "subnet"}}
            append_jsonl(path, rec)
            got.append(rec)
            done += 1
            if progress:
                progress(done, todo)
    if busy:
        from hwnas.measure.backend import default_max_load

        from .bench import refuse_loaded

        max_load = (profile.header.get("backend_config") or {}).get("max_load", default_max_load())
        refuse_loaded(f"{len(busy)} of {todo} sub-network measurement(s) (kept out of {path.name}; the rest are "
                      "stored, so a re-run measures only these)", max(busy), max_load)
    ref = (profile.header.get("fingerprint") or {}).get("roofline") if normalize else None
    return [combine_rounds([normalized(r, ref) for r in have[s.key()][:max(rounds, 1)]]) for s in subnets]


def measured_sample(path: Path, subnet: Subnet, *, prefill: int = 128, decode: int = 32, batch: int = 1,
                    threads: int | None = None) -> dict[str, Any] | None:
    """The combined record of `subnet` in a samples file (all its rounds), or None if it was not measured."""
    recs = _read_rounds(path, {"prefill": prefill, "decode": decode, "batch": batch}).get(subnet.key())
    if not recs or (threads is not None and recs[0].get("threads") != threads):
        return None
    return combine_rounds(recs)


def prediction_scores(pred: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Share within ±5 % / ±10 % of the measurement, MAPE and Kendall tau of `pred` against `measured`."""
    from scipy.stats import kendalltau

    err = np.abs(np.asarray(pred) - measured) / measured
    return {"within_5pct": float(np.mean(err <= 0.05)), "within_10pct": float(np.mean(err <= 0.10)),
            "mape": float(np.mean(err)), "kendall_tau": float(kendalltau(measured, pred).statistic)}


def score_lines(per_target: dict[str, dict[str, dict]]) -> list[str]:
    """The validate table: one line per target and predictor ("model", "lut_sum", "re-meas.")."""
    lines = [f"{'target':22} {'predictor':16} {'±5%':>6} {'±10%':>6} {'MAPE':>7} {'tau':>6}"]
    for t, stats in per_target.items():
        for name, s in stats.items():
            lines.append(f"{t:22} {name:16} {s['within_5pct']:6.0%} {s['within_10pct']:6.0%} {s['mape']:7.2%} "
                         f"{s['kendall_tau']:6.3f}")
    return lines


def repeatability(recs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """The measurement noise floor: how well one round predicts another round of the same
    sub-networks (round 1 as the 'prediction' of round 0), scored like a model. No predictor can
    be expected to agree with a single measurement better than a re-measurement does."""
    pairs = [r["round_values"] for r in recs if r.get("rounds", 1) > 1]
    if len(pairs) < 3:
        return None
    out = {}
    for t in TARGETS:
        a = np.asarray([p[t][0] for p in pairs])
        b = np.asarray([p[t][1] for p in pairs])
        out[t] = {**prediction_scores(b, a), "n": len(pairs)}
    return out


def sample_subnets(space: SearchSpace, n: int, seed: int, exclude: set[str] | None = None,
                   extremes: bool = True, layer_scores: list[float] | None = None) -> list[Subnet]:
    """`n` distinct random sub-networks (plus the largest and smallest when `extremes` -- the
    smallest is `Subnet.smallest`, its least influential layers by `layer_scores` dropped -- and, in a
    space with weight formats, the largest and smallest with every weight in each compressed
    format: random per-block formats are almost never uniform, and without these the fit
    extrapolates to the all-compressed networks the search prefers). The ends are always all
    there, with at least two random sub-networks beside them, even where that exceeds `n`."""
    rng = random.Random(seed)
    out: list[Subnet] = []
    seen = set(exclude or ())
    if extremes:
        full = Subnet(tuple(range(space.num_layers)), (space.mlp_widths[-1],) * space.num_layers)
        ends = [full, Subnet.smallest(space, layer_scores)]
        for fmt in space.weight_formats if space.compressed else ():
            if fmt != "fp32":
                ends += [e.compressed(Compression.uniform(fmt, e.depth)) for e in ends[:2]]
        for s in ends:  # every format's ends, even past n: a format without them is extrapolated
            if s.key() not in seen:
                seen.add(s.key())
                out.append(s)
        n = max(n, len(out) + min(n, 2))  # and a few random ones beside them
    while len(out) < n:
        d = space.sample(rng)
        s = Subnet.from_dict(d)
        if s.key() not in seen:
            seen.add(s.key())
            out.append(s)
    return out


def _fit_booster(x: np.ndarray, y: np.ndarray, seed: int):
    import lightgbm as lgb

    n = len(y)
    params = {"objective": "regression", "learning_rate": 0.1, "num_leaves": 7,
              "min_data_in_leaf": max(2, min(5, n // 8)), "min_data_in_bin": 1, "feature_fraction": 0.9,
              "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0, "seed": seed,
              "deterministic": True, "num_threads": 1, "verbose": -1, "linear_tree": True}
    return lgb.train(params, lgb.Dataset(x, y, params={"verbose": -1}), num_boost_round=80)


def _fit_linear(lut_sum: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of measured ~ lookup-table sum."""
    slope, intercept = np.polyfit(lut_sum, y, 1)
    return float(slope), float(intercept)


def _cv_mape(x: np.ndarray, y_ms: np.ndarray, mode: str, seed: int, folds: int = 5) -> float:
    order = np.random.default_rng(seed).permutation(len(y_ms))
    errs = []
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        if mode == "linear":
            slope, intercept = _fit_linear(x[train, 0], y_ms[train])
            errs += list(np.abs(slope * x[test, 0] + intercept - y_ms[test]) / y_ms[test])
            continue
        yt = np.log(y_ms[train] / x[train, 0]) if mode == "ratio" else np.log(y_ms[train])
        pred = _fit_booster(x[train], yt, seed).predict(x[test])
        pred = np.exp(pred) * x[test, 0] if mode == "ratio" else np.exp(pred)
        errs += list(np.abs(pred - y_ms[test]) / y_ms[test])
    return float(np.mean(errs))


def fit(profile_dir: str | Path, model: str, space: SearchSpace, out: str | Path, *, samples: int = 40,
        prefill: int = 128, decode: int = 32, batch: int = 1, seed: int = 0, rounds: int = 1,
        progress: Callable[[int, int], None] | None = None, isolate: bool = True,
        speed_check: bool = True, layer_scores: list[float] | None = None) -> LatencyModel:
    """Measure `samples` sub-networks `rounds` times each (interleaved, resumable; the median is
    the training target) and fit one regressor per target. `layer_scores`: the base model's layer
    influence (its channel order's), which picks the layers the smallest sample drops."""
    from . import __version__
    from .model import load_config
    from .outdir import check_out, claim_dir

    out = check_out(out, "latency-model", legacy=("samples.jsonl",))
    profile_dir = Path(profile_dir)
    prof = DeviceProfile.load(profile_dir)
    if prof.header.get("model") != model:
        raise LatencyModelError(f"profile {profile_dir} was made for model '{prof.header.get('model')}', not '{model}'")
    speed = check_same_device(prof, speed=speed_check)
    shape = Shape.of(load_config(model))
    subnets = sample_subnets(space, samples, seed, layer_scores=layer_scores)
    claim_dir(out, "latency-model", legacy=("samples.jsonl",))
    recs = measure_samples(out / "samples.jsonl", subnets, prof, prefill=prefill, decode=decode, batch=batch,
                           rounds=rounds, progress=progress, isolate=isolate)
    fb = FeatureBuilder(prof, shape, space.mlp_widths)
    keep, widths, formats = subnet_arrays(subnets, shape.num_layers, with_formats=True)
    formats = None if plain(formats) else formats  # each block's lookup-table row in its own format, as predicted
    import lightgbm as lgb

    targets = {}
    for t in TARGETS:
        phase, tokens, context, b = phase_settings(t, prefill, decode, batch)
        x = fb.build(keep, widths, phase, tokens, context, b, formats=formats)
        y = np.asarray([float(r[t]) for r in recs])
        cv = {m: _cv_mape(x, y, m, seed) for m in MODES}
        mode = min(cv, key=cv.get)
        targets[t] = {"file": None, "mode": mode, "cv_mape": {m: round(v, 4) for m, v in cv.items()}}
        stale = out / f"{t}.txt"
        if mode == "linear":
            slope, intercept = _fit_linear(x[:, 0], y)
            targets[t].update(slope=slope, intercept=intercept)
            stale.unlink(missing_ok=True)
            continue
        booster = _fit_booster(x, np.log(y / x[:, 0]) if mode == "ratio" else np.log(y), seed)
        write_text(out / f"{t}.txt", booster.model_to_string())
        targets[t]["file"] = f"{t}.txt"
    header = {
        "version": MODEL_VERSION, "model": model, "space": space.name, "widths": list(space.mlp_widths),
        "profile_path": os.path.relpath(profile_dir.resolve(), out.resolve()), "profile_id": profile_id(profile_dir),
        "backend": prof.backend, "device_slug": prof.header.get("device_slug"),
        "dtype": prof.header.get("dtype", "fp32"),
        "roofline": (prof.header.get("fingerprint") or {}).get("roofline"),
        "features": list(FEATURES), "targets": targets, "samples": len(recs),
        "bench": {"prefill": prefill, "decode": decode, "batch": batch, "threads": prof.header.get("threads", 1),
                  "rounds": rounds, "speed_check": speed},
        "versions": {"hwnas": __version__, "lightgbm": lgb.__version__}, "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_yaml(out / HEADER, header)
    return LatencyModel.load(out)


NOISE_SUBSET = 10  # validate with one round: this many held-out sub-networks are measured twice (the noise floor)


def validate(lm: LatencyModel, space: SearchSpace, n: int = 30, seed: int = 1000, rounds: int | None = None,
             progress: Callable[[int, int], None] | None = None, isolate: bool = True,
             speed_check: bool = True) -> dict[str, Any]:
    """Measure `n` fresh sub-networks never trained on (`rounds` times each, default: as many as the
    fit used) and score the model and the plain LUT sum against the median, the measurements brought
    to the profile's speed by their probes (`normalized`) and, beside it, as measured ("raw speed").
    The measurement's own repeatability (round vs round, the ceiling for any predictor) is always
    reported: with one round, the first `NOISE_SUBSET` sub-networks are measured a second time."""
    speed = check_same_device(lm.profile, speed=speed_check)
    b = lm.header["bench"]
    settings = {k: b[k] for k in ("prefill", "decode", "batch")}
    trained = set(_read_rounds(lm.folder / "samples.jsonl", settings))
    subnets = sample_subnets(space, n, seed, exclude=trained, extremes=False)
    rounds = rounds or int(b.get("rounds", 1))
    path = lm.folder / "validation.jsonl"
    recs = measure_samples(path, subnets, lm.profile, **settings, rounds=rounds, progress=progress, isolate=isolate)
    noise = recs
    if rounds < 2:
        noise = measure_samples(path, subnets[:NOISE_SUBSET], lm.profile, **settings, rounds=2, progress=progress,
                                isolate=isolate)
    raw = measure_samples(path, subnets, lm.profile, **settings, rounds=rounds, normalize=False)  # read back only
    pred = lm.predict_subnets(subnets, **settings)
    base = lm.lut_sums(subnets, **settings)
    report: dict[str, Any] = {"n": len(subnets), "backend": lm.header["backend"], "rounds": rounds,
                              "per_target": {}, "repeatability": repeatability(noise), "speed_check": speed,
                              "speed_factor": _median_factors(recs, lm.header.get("roofline"))}
    for t in TARGETS:
        y = np.asarray([float(r[t]) for r in recs])
        rows = {"model": prediction_scores(pred[t], y)}
        if t in base:
            rows["lut_sum"] = prediction_scores(base[t], y)
        if any("raw" in r for r in recs) and metrics.METRICS[t].speed:
            rows["model, raw speed"] = prediction_scores(pred[t], np.asarray([float(r[t]) for r in raw]))
        report["per_target"][t] = rows
    return report


def _median_factors(recs: Sequence[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, float]:
    """Median over the measurements with a probe of probe / profile figure per timed target (whether
    or not it was outside the dead band and acted on)."""
    got = [speed_factors(r["probe"], reference, deadband=0.0) for r in recs if r.get("probe")]
    return {t: round(float(np.median([g[t] for g in got])), 4) for t in TARGETS if metrics.METRICS[t].speed} if got else {}

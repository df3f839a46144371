"""Operator profiling into a device profile: an operator grid, a lookup table, and its header.

A device profile is a folder (format in docs/formats.md): `profile.yaml` (version, fingerprint,
runtime versions, grid, model/space, date, threads) and `lut.csv` (one named-column row per
op x width x phase x tokens/context x batch). `run_profile` sweeps the grid one graph per worker
process and rewrites `lut.csv` atomically after each graph, so a killed run resumes where it
stopped. `DeviceProfile.load(dir).lookup(...)` is what the latency model builds features from.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ProfileError
from .fileio import write_text, write_yaml

PROFILE_VERSION = 1
HEADER_FILE = "profile.yaml"
LUT_FILE = "lut.csv"
KEY_COLUMNS = ("op", "width", "phase", "tokens", "context", "batch", "format")
VALUE_COLUMNS = ("median_ms", "p90_ms", "cv", "cv_raw", "repeats", "peak_mem_mb", "flagged", "load", "threads")
COLUMNS = KEY_COLUMNS + VALUE_COLUMNS
OPS = ("attention", "mlp", "head")
INT_COLUMNS = {"width", "tokens", "context", "batch", "repeats", "threads"}
OPTIONAL_COLUMNS = {"format": "fp32"}  # absent from tables written before weight formats: their value
REQUIRED_KEYS = ("backend", "model")  # of profile.yaml: what the latency model and the search read


@dataclass
class OperatorGrid:
    """Which shapes to time. MLP and head decode do not depend on context (row context = 0)."""

    prefill_tokens: list[int] = field(default_factory=lambda: [32, 128, 512])
    decode_contexts: list[int] = field(default_factory=lambda: [128, 512, 1024])
    batches: list[int] = field(default_factory=lambda: [1])
    mlp_widths: list[int] = field(default_factory=list)
    layer: int = 0  # the decoder layer whose weights the blocks use
    formats: list[str] = field(default_factory=lambda: ["fp32"])  # weight formats each block is timed in

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["formats"] == ["fp32"]:
            del d["formats"]  # the identity profiles had before weight formats (they resume as before)
        return d

    def jobs(self) -> list[tuple[str, int, str, list[dict[str, int | str]]]]:
        """(op, width, format, tasks) per graph; a task is a worker `Task` as a dict."""
        def tasks(context_dependent: bool) -> list[dict[str, int | str]]:
            out: list[dict[str, int | str]] = []
            for b in self.batches:
                out += [{"phase": "prefill", "tokens": t, "context": 0, "batch": b} for t in self.prefill_tokens]
                contexts = self.decode_contexts if context_dependent else [0]
                out += [{"phase": "decode", "tokens": 1, "context": c, "batch": b} for c in contexts]
            return out

        jobs = []
        for f in self.formats:
            jobs.append(("attention", 0, f, tasks(True)))
            jobs += [("mlp", w, f, tasks(False)) for w in self.mlp_widths]
            jobs.append(("head", 0, f, tasks(False)))
        return jobs

    def size(self) -> int:
        return sum(len(t) for *_, t in self.jobs())


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(int(row[c]) if c in INT_COLUMNS else str(row[c]) for c in KEY_COLUMNS)


@dataclass
class DeviceProfile:
    """A loaded device profile: the YAML header and the lookup-table rows."""

    header: dict[str, Any]
    rows: list[dict[str, Any]]
    path: Path | None = None

    # --- files -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path) -> DeviceProfile:
        """Read a profile folder (`profile.yaml` + `lut.csv`)."""
        from .fileio import read_yaml_file

        folder = Path(folder)
        head = folder / HEADER_FILE
        if not folder.is_dir():
            raise ProfileError(f"device profile folder not found: {folder}; make one with `hwnas profile`")
        if not head.is_file():
            raise ProfileError(f"{folder} is not a device profile (no {HEADER_FILE}); make one with `hwnas profile`")
        header = read_yaml_file(head, "device profile header", ProfileError)
        if not isinstance(header, dict):
            raise ProfileError(f"{head}: must be a YAML mapping (version, backend, model, ...); "
                               "make the profile again with `hwnas profile`")
        if header.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{head}: version {header.get('version')!r}, this hwnas reads {PROFILE_VERSION}")
        bad = [k for k in REQUIRED_KEYS if not isinstance(header.get(k), str) or not header[k]]
        if bad:
            raise ProfileError(f"{head}: missing or not text: {', '.join(bad)}; make the profile again with "
                               "`hwnas profile`")
        if not isinstance(header.get("threads", 1), int) or isinstance(header.get("threads"), bool):
            raise ProfileError(f"{head}: threads must be an integer")
        for key in ("fingerprint", "grid"):
            if header.get(key) is not None and not isinstance(header[key], dict):
                raise ProfileError(f"{head}: {key} must be a mapping")
        lut = folder / LUT_FILE
        if not lut.is_file():  # hwnas writes the table before the header, so this is a broken folder
            raise ProfileError(f"{folder}: {LUT_FILE} is missing; make the profile again with `hwnas profile`")
        return cls(header, read_lut(lut), folder)

    def save(self, folder: str | Path | None = None) -> Path:
        """Write both files atomically (the LUT first, so a header never names missing rows)."""
        folder = Path(folder or self.path)
        write_lut(folder / LUT_FILE, self.rows)
        write_yaml(folder / HEADER_FILE, self.header)
        self.path = folder
        return folder

    # --- queries ---------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return str(self.header.get("backend", ""))

    @property
    def formats(self) -> list[str]:
        """The weight formats the table has rows for."""
        return sorted({r["format"] for r in self.rows}) or ["fp32"]

    def lookup(self, op: str, phase: str, *, width: int | None = None, tokens: int = 1, context: int = 0,
               batch: int = 1, stat: str = "median_ms", format: str = "fp32") -> float:  # noqa: A002
        """Milliseconds of one op: exact grid point, else linear inter-/extrapolation along tokens
        (prefill) or context (decode) between the two nearest grid points. `width` is the MLP
        width (ignored for attention and head); context is ignored where the op does not use it;
        `format` the weight format the op's weights were timed in."""
        if op not in OPS:
            raise ProfileError(f"unknown op {op!r}; a profile has {', '.join(OPS)}")
        w = int(width or 0) if op == "mlp" else 0
        cand = [r for r in self.rows if r["op"] == op and r["phase"] == phase and int(r["width"]) == w
                and int(r["batch"]) == batch and r["format"] == format]
        if not cand:
            have = sorted({int(r["width"]) for r in self.rows if r["op"] == op})
            raise ProfileError(f"profile has no {op} {phase} rows for width={w} batch={batch} format={format} "
                               f"(widths: {have}, formats: {self.formats}); profile with that width/batch/format "
                               "in the grid")
        axis = "tokens" if phase == "prefill" else "context"
        if phase == "decode" and all(int(r["context"]) == 0 for r in cand):
            axis, target = None, 0
        else:
            target = tokens if axis == "tokens" else context
        if axis is None:
            return float(cand[0][stat])
        points = sorted((int(r[axis]), float(r[stat])) for r in cand)
        xs = [p[0] for p in points]
        i = bisect.bisect_left(xs, target)
        if i < len(xs) and xs[i] == target:
            return points[i][1]
        if len(points) == 1:
            return points[0][1]
        i = min(max(i, 1), len(points) - 1)
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        return max(0.0, y0 + (y1 - y0) * (target - x0) / (x1 - x0))

    def sum_ops(self, mlp_widths: Iterable[int], phase: str, *, tokens: int = 1, context: int = 0,
                batch: int = 1) -> float:
        """Sum of operator times for a network with these per-layer MLP widths (a feature, not a
        prediction: fusion and framework overhead make the real number differ)."""
        widths = list(mlp_widths)
        kw = {"tokens": tokens, "context": context, "batch": batch}
        attn = self.lookup("attention", phase, **kw)
        total = self.lookup("head", phase, **kw) + attn * len(widths)
        return total + sum(self.lookup("mlp", phase, width=w, **kw) for w in widths)


FLOAT_COLUMNS = ("median_ms", "p90_ms", "cv", "cv_raw", "peak_mem_mb", "load")
PHASES = ("prefill", "decode")


def read_lut(path: Path) -> list[dict[str, Any]]:
    """Rows of a `lut.csv` with typed values (named columns; order does not matter). A malformed
    table (cut short, a missing column, a value that is not a number) is a `ProfileError`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(COLUMNS) - set(reader.fieldnames or []) - set(OPTIONAL_COLUMNS)
            if missing:
                raise ProfileError(f"{path}: missing columns {sorted(missing)}; make the profile again with "
                                   "`hwnas profile`")
            rows = []
            for raw in reader:
                rows.append(_lut_row(raw, path, reader.line_num))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProfileError(f"{path}: not a readable CSV table ({type(exc).__name__}); make the profile again "
                           "with `hwnas profile`") from exc
    return rows


def _lut_row(raw: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    row: dict[str, Any] = {**OPTIONAL_COLUMNS, **raw}
    if None in row or any(row.get(c) is None for c in COLUMNS):
        raise ProfileError(f"{path}: line {line} has {'too many' if None in row else 'too few'} fields "
                           "(cut short?); make the profile again with `hwnas profile`")
    try:
        for c in INT_COLUMNS:
            row[c] = int(row[c])
        for c in FLOAT_COLUMNS:
            row[c] = float(row[c])
    except ValueError as exc:
        raise ProfileError(f"{path}: line {line}: {exc}; values must be numbers") from exc
    if not all(math.isfinite(row[c]) and row[c] >= 0 for c in FLOAT_COLUMNS + tuple(INT_COLUMNS)):
        raise ProfileError(f"{path}: line {line}: values must be finite and >= 0")
    if row["op"] not in OPS or row["phase"] not in PHASES:
        raise ProfileError(f"{path}: line {line}: op {row['op']!r} / phase {row['phase']!r}; ops are "
                           f"{', '.join(OPS)}, phases {', '.join(PHASES)}")
    row["flagged"] = str(row["flagged"]).lower() in ("true", "1")
    return row


def write_lut(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=row_key):
        w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def grid_for(config: Any, space: Any, *, prefill_tokens: list[int] | None = None,
             decode_contexts: list[int] | None = None, batches: list[int] | None = None) -> OperatorGrid:
    """The grid a model + space calls for: every MLP width of the space at the given token counts."""
    grid = OperatorGrid(mlp_widths=sorted(set(space.mlp_widths)), formats=list(space.weight_formats))
    if prefill_tokens:
        grid.prefill_tokens = sorted(prefill_tokens)
    if decode_contexts:
        grid.decode_contexts = sorted(decode_contexts)
    if batches:
        grid.batches = sorted(batches)
    return grid


def run_profile(model: str, space: Any, backend: str, out: str | Path, *, grid: OperatorGrid | None = None,
                config: dict[str, Any] | None = None, isolate: bool = True,
                on_progress: Callable[[int, int, str], None] | None = None) -> DeviceProfile:
    """Sweep the grid on one backend into `out` (resuming rows already there)."""
    from hwnas_backends.base import backend_class, default_max_load
    from hwnas_backends.graphs import GraphSpec
    from hwnas_backends.worker import Task, run_isolated, run_tasks

    from .compression import check_formats
    from .errors import BackendError
    from .fingerprint import fingerprint
    from .model import load_config

    out = Path(out)
    cfg_model = load_config(model)
    grid = grid or grid_for(cfg_model, space)
    config = dict(config or {})
    threads = int(config.setdefault("threads", 1))
    cls = backend_class(backend)
    ok, why = cls.available()
    if not ok:
        raise BackendError(f"backend {backend} is not available: {why}")
    check_formats(grid.formats, cls.WEIGHT_FORMATS, f"backend {backend}", BackendError)
    identity = {"backend": backend, "model": model, "grid": grid.to_dict(), "threads": threads}
    from .outdir import claim_dir

    claim_dir(out, "profile", legacy=(HEADER_FILE,))
    if (out / HEADER_FILE).is_file():
        prof = DeviceProfile.load(out)
        old = {k: prof.header.get(k) for k in identity}
        if old != identity:
            diff = [k for k in identity if old[k] != identity[k]]
            raise ProfileError(f"{out} holds a profile with different {', '.join(diff)}; "
                               "give another --out (or delete that folder) to start a new one")
    else:
        fp = fingerprint(threads=threads)
        header = {"version": PROFILE_VERSION, **identity, "space": space.name,
                  "model_shape": {"hidden_size": cfg_model.hidden_size, "num_layers": cfg_model.num_hidden_layers,
                                  "heads": cfg_model.num_attention_heads,
                                  "kv_heads": cfg_model.num_key_value_heads, "vocab_size": cfg_model.vocab_size},
                  "fingerprint": fp.to_dict(), "device_slug": fp.slug, "versions": cls.versions(),
                  "backend_config": config, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "complete": False, "wall_s": 0.0}
        prof = DeviceProfile(header, [], out)
        prof.save(out)
    max_load = float(config.get("max_load", default_max_load()))

    def loaded(row: dict[str, Any]) -> bool:  # timed under load through every retry: measure again
        return bool(row["flagged"]) and float(row["load"]) > max_load

    done = {row_key(r) for r in prof.rows if not loaded(r)}
    total = grid.size()
    t_start = time.perf_counter()
    for op, width, fmt, tasks in grid.jobs():
        todo = [t for t in tasks if row_key({"op": op, "width": width, "format": fmt, **t}) not in done]
        if not todo:
            continue
        spec = GraphSpec(op, model, width=width or None, layer=grid.layer, weights=None if fmt == "fp32" else fmt)
        worker_tasks = [Task(t["phase"], int(t["tokens"]), int(t["context"]), int(t["batch"])) for t in todo]
        run = run_isolated if isolate else run_tasks
        res = run(backend, config, spec, worker_tasks)
        for t, m in zip(todo, res.measurements):
            row = {"op": op, "width": width, "format": fmt, **t, **{k: v for k, v in m.to_dict().items() if k in VALUE_COLUMNS}}
            prof.rows = [r for r in prof.rows if row_key(r) != row_key(row)] + [row]
            if not loaded(row):
                done.add(row_key(row))
        prof.header["device"] = res.device
        prof.header["wall_s"] = round(float(prof.header.get("wall_s", 0.0)) + time.perf_counter() - t_start, 1)
        t_start = time.perf_counter()
        prof.save(out)
        if on_progress:
            on_progress(len(done), total, f"{op}{'-' + str(width) if width else ''}{'' if fmt == 'fp32' else '-' + fmt}")
    prof.header["complete"] = len(done) >= total
    prof.header["flagged_rows"] = sum(1 for r in prof.rows if r["flagged"])
    prof.save(out)
    busy = [r for r in prof.rows if loaded(r)]
    if busy:
        raise ProfileError(
            f"{len(busy)} of {total} rows were timed while other processes used up to "
            f"{max(float(r['load']) for r in busy):.2f} CPU cores (max_load={max_load}) through every retry; "
            f"{out} is kept incomplete. Run the same command again on a quiet machine: it re-measures only "
            "those rows (--option max_load=N accepts a busier machine)")
    return prof

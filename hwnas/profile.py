"""Operator profiling into a device profile: an operator grid, a lookup table, and its header.

A device profile is a folder (format in docs/formats.md): `profile.yaml` (version, fingerprint,
runtime versions, grid, model/space, date, threads) and `lut.csv` (one named-column row per
op x width x phase x tokens/context x batch). `run_profile` sweeps the grid one graph per worker
process and rewrites `lut.csv` atomically after each graph, so a killed run resumes where it
stopped. `DeviceProfile.load(dir).lookup(...)` is what the latency model builds features from.

A backend that times whole networks only (`Backend.KINDS` without operator blocks: llama.cpp, whose
unit is a GGUF file) is profiled by *network differences*: in each weight format it times
networks of the base's first d1 and d2 layers (4 and 16) at full MLP width and of d2 layers at
every other width (raw timings in `networks.csv`), and derives the same table: a layer costs
(T(d2) - T(d1)) / (d2 - d1); per-layer cost against MLP width is fitted as a + b·width, whose
intercept is the attention row (it carries the MLP's width-independent part) and the rest the MLP
rows; the head row is what d1 layers leave of T(d1) (embedding, final norm, LM head, the
runtime's per-call overhead). Decode rows of MLP and head average over the timed contexts.
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
NETWORKS_FILE = "networks.csv"  # raw whole-network timings of a networks-only backend
NET_KEY_COLUMNS = ("depth", "width", "phase", "tokens", "context", "batch", "format")
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

    def tasks(self, context_dependent: bool = True) -> list[dict[str, int | str]]:
        """The shapes one graph is timed at, as worker `Task` dicts (decode at context 0 only for
        ops that do not read the cache)."""
        out: list[dict[str, int | str]] = []
        for b in self.batches:
            out += [{"phase": "prefill", "tokens": t, "context": 0, "batch": b} for t in self.prefill_tokens]
            contexts = self.decode_contexts if context_dependent else [0]
            out += [{"phase": "decode", "tokens": 1, "context": c, "batch": b} for c in contexts]
        return out

    def jobs(self) -> list[tuple[str, int, str, list[dict[str, int | str]]]]:
        """(op, width, format, tasks) per graph; a task is a worker `Task` as a dict."""
        tasks = self.tasks
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
               batch: int = 1, stat: str = "median_ms", format: str = "fp32") -> float:
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
    _write_table(path, COLUMNS, rows, row_key)


def _write_table(path: Path, columns: Iterable[str], rows: list[dict[str, Any]], key: Callable[[dict], tuple]) -> None:
    """Named-column CSV, rows sorted by `key`, floats to 4 decimals, written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=key):
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
                on_progress: Callable[[int, int, str], None] | None = None, dtype: str = "fp32") -> DeviceProfile:
    """Sweep the grid on one backend into `out` (resuming rows already there). `dtype`: what torch
    loads the weights in (what the torch backend computes in; other runtimes get fp32 graphs)."""
    from hwnas.measure.backend import backend_class, default_max_load
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_isolated, run_tasks

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
    identity = {"backend": backend, "model": model, "grid": grid.to_dict(), "threads": threads, "dtype": dtype}
    from .outdir import claim_dir

    claim_dir(out, "profile", legacy=(HEADER_FILE,))
    if (out / HEADER_FILE).is_file():
        prof = DeviceProfile.load(out)
        old = {k: prof.header.get(k, "fp32" if k == "dtype" else None) for k in identity}  # fp32: before dtypes
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

    if "attention" not in cls.KINDS:  # whole networks only: rows from network differences
        _profile_networks(prof, out, model, cfg_model, grid, backend, config, isolate, loaded, on_progress, dtype)
        return _finish(prof, out, [r for r in _read_networks(out) if loaded(r)], len(network_jobs(grid, cfg_model)),
                       max_load)
    done = {row_key(r) for r in prof.rows if not loaded(r)}
    total = grid.size()
    t_start = time.perf_counter()
    for op, width, fmt, tasks in grid.jobs():
        todo = [t for t in tasks if row_key({"op": op, "width": width, "format": fmt, **t}) not in done]
        if not todo:
            continue
        spec = GraphSpec(op, model, width=width or None, layer=grid.layer, weights=None if fmt == "fp32" else fmt,
                         dtype=dtype)
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
    return _finish(prof, out, [r for r in prof.rows if loaded(r)], total, max_load)


def _finish(prof: DeviceProfile, out: Path, busy: list[dict[str, Any]], total: int, max_load: float) -> DeviceProfile:
    prof.header["flagged_rows"] = sum(1 for r in prof.rows if r["flagged"])
    prof.save(out)
    if busy:
        raise ProfileError(
            f"{len(busy)} of {total} rows were timed while other processes used up to "
            f"{max(float(r['load']) for r in busy):.2f} CPU cores (max_load={max_load}) through every retry; "
            f"{out} is kept incomplete. Run the same command again on a quiet machine: it re-measures only "
            "those rows (--option max_load=N accepts a busier machine)")
    return prof


# --- backends that time whole networks only: rows from network differences ------------------------

def network_jobs(grid: OperatorGrid, config: Any) -> list[tuple[int, int, str]]:
    """(depth, MLP width, format) of every network a networks-only profile times."""
    d1, d2 = network_depths(int(config.num_hidden_layers))
    full = int(config.intermediate_size)
    widths = sorted(set(grid.mlp_widths) - {full})
    return [(d, w, f) for f in grid.formats for d, w in ((d1, full), (d2, full), *((d2, w) for w in widths))]


def network_depths(num_layers: int) -> tuple[int, int]:
    """The two depths whose difference gives a layer's cost: 4 and 16 (fewer for shallow models;
    12 layers of difference keep a quantized layer's ~0.3 ms well above the timing noise)."""
    d2 = min(16, num_layers)
    return max(1, d2 // 4), d2


def _net_key(row: dict[str, Any]) -> tuple:
    return tuple(str(row[c]) if c in ("phase", "format") else int(row[c]) for c in NET_KEY_COLUMNS)


def _read_networks(out: Path) -> list[dict[str, Any]]:
    path = out / NETWORKS_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    try:
        for r in rows:
            for c in ("depth", "width", "tokens", "context", "batch", "repeats", "threads"):
                r[c] = int(r[c])
            for c in FLOAT_COLUMNS:
                r[c] = float(r[c])
            r["flagged"] = str(r["flagged"]).lower() in ("true", "1")
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: malformed ({exc}); make the profile again with `hwnas profile`") from exc
    return rows


def _write_networks(out: Path, rows: list[dict[str, Any]]) -> None:
    _write_table(out / NETWORKS_FILE, NET_KEY_COLUMNS + VALUE_COLUMNS, rows, _net_key)


def _profile_networks(prof: DeviceProfile, out: Path, model: str, config: Any, grid: OperatorGrid, backend: str,
                      backend_config: dict[str, Any], isolate: bool, loaded: Callable[[dict[str, Any]], bool],
                      on_progress: Callable[[int, int, str], None] | None, dtype: str = "fp32") -> None:
    """Time the networks of `network_jobs` (resuming `networks.csv`) and derive the table."""
    from hwnas.measure.graphs import GraphSpec
    from hwnas.measure.worker import Task, run_isolated, run_tasks

    from .compression import Compression

    rows = _read_networks(out)
    done = {_net_key(r) for r in rows if not loaded(r)}
    jobs = network_jobs(grid, config)
    tasks = grid.tasks()
    t_start = time.perf_counter()
    for i, (depth, width, fmt) in enumerate(jobs):
        todo = [t for t in tasks if _net_key({"depth": depth, "width": width, "format": fmt, **t}) not in done]
        if todo:
            subnet: dict[str, Any] = {"layers": list(range(depth)), "mlp_widths": [width] * depth}
            if fmt != "fp32":
                subnet["compression"] = Compression.uniform(fmt, depth).to_dict()
            spec = GraphSpec("model", model, subnet=subnet, dtype=dtype)
            run = run_isolated if isolate else run_tasks
            res = run(backend, backend_config, spec,
                      [Task(t["phase"], int(t["tokens"]), int(t["context"]), int(t["batch"])) for t in todo])
            for t, m in zip(todo, res.measurements):
                row = {"depth": depth, "width": width, "format": fmt, **t,
                       **{k: v for k, v in m.to_dict().items() if k in VALUE_COLUMNS}}
                rows = [r for r in rows if _net_key(r) != _net_key(row)] + [row]
                if not loaded(row):
                    done.add(_net_key(row))
            prof.header["device"] = res.device
            _write_networks(out, rows)
            rows = _read_networks(out)  # derive from what the file holds, so a re-run derives the same table
            prof.rows = derive_rows(rows, grid, config)
            prof.header["wall_s"] = round(float(prof.header.get("wall_s", 0.0)) + time.perf_counter() - t_start, 1)
            prof.header["complete"] = all(
                _net_key({"depth": d, "width": w, "format": f, **t}) in done for d, w, f in jobs for t in tasks)
            prof.header["derived_from"] = NETWORKS_FILE
            prof.save(out)
        t_start = time.perf_counter()
        if on_progress:
            on_progress(i + 1, len(jobs), f"network {depth} layers @{width}{'' if fmt == 'fp32' else ' ' + fmt}")


def derive_rows(networks: list[dict[str, Any]], grid: OperatorGrid, config: Any) -> list[dict[str, Any]]:
    """Lookup-table rows (attention, MLP per width, head; per format and shape) from whole-network
    timings (see the module docstring); shapes or formats whose networks are not all timed yet
    yield no rows. Values are clamped at 0 (a difference smaller than the noise)."""
    import numpy as np

    d1, d2 = network_depths(int(config.num_hidden_layers))
    full = int(config.intermediate_size)
    by = {_net_key(r): r for r in networks}
    widths = sorted(set(grid.mlp_widths) | {full})
    out: list[dict[str, Any]] = []
    for fmt in grid.formats:
        per_shape = []
        for t in grid.tasks():
            def get(depth: int, width: int, _t: dict[str, Any] = t, _f: str = fmt) -> dict[str, Any] | None:
                return by.get(_net_key({"depth": depth, "width": width, "format": _f, **_t}))

            n1, n2 = get(d1, full), get(d2, full)
            wide = {w: get(d2, w) for w in widths}
            if n1 is None or n2 is None or any(v is None for v in wide.values()):
                continue
            used = [n1, n2, *wide.values()]
            t1, t2 = n1["median_ms"], n2["median_ms"]
            layer = (t2 - t1) / (d2 - d1)
            per_layer = {w: layer + (r["median_ms"] - t2) / d2 for w, r in wide.items()}
            if len(per_layer) >= 2:
                b, a = np.polyfit(np.asarray(list(per_layer), float), np.asarray(list(per_layer.values())), 1)
            else:  # one width: nothing to separate the two by; attention gets its share of the parameters
                a = layer * _attention_share(config)
            values = {("attention", 0): max(0.0, float(a)), ("head", 0): max(0.0, t1 - d1 * layer)}
            values.update({("mlp", w): max(0.0, v - float(a)) for w, v in per_layer.items()})
            stats = {"p90_ratio": max(r["p90_ms"] / max(r["median_ms"], 1e-9) for r in used),
                     "cv": max(r["cv"] for r in used), "cv_raw": max(r["cv_raw"] for r in used),
                     "repeats": min(r["repeats"] for r in used), "peak_mem_mb": n1["peak_mem_mb"],
                     "flagged": any(r["flagged"] for r in used), "load": max(r["load"] for r in used),
                     "threads": n1["threads"]}
            per_shape.append((t, values, stats))
        out += _rows_from_shapes(per_shape, fmt, set(grid.mlp_widths))
    return out


def _rows_from_shapes(per_shape: list[tuple[dict[str, Any], dict[tuple[str, int], float], dict[str, Any]]],
                      fmt: str, grid_widths: set[int]) -> list[dict[str, Any]]:
    """Rows of one format: prefill rows per shape; decode rows of attention per context, of MLP
    and head one per batch (context 0), averaged over the contexts."""
    def row(op: str, width: int, t: dict[str, Any], ms: float, st: dict[str, Any]) -> dict[str, Any]:
        return {"op": op, "width": width, "format": fmt, **t, "median_ms": ms, "p90_ms": ms * st["p90_ratio"],
                **{k: v for k, v in st.items() if k != "p90_ratio"}}

    out = []
    decode: dict[tuple[str, int, int], list[tuple[float, dict[str, Any]]]] = {}
    for t, values, st in per_shape:
        for (op, width), ms in values.items():
            if op == "mlp" and width not in grid_widths:
                continue
            if t["phase"] == "prefill" or op == "attention":
                out.append(row(op, width, t, ms, st))
            else:
                decode.setdefault((op, width, int(t["batch"])), []).append((ms, st))
    for (op, width, batch), vals in decode.items():
        st = {**vals[0][1], "cv": max(v[1]["cv"] for v in vals), "flagged": any(v[1]["flagged"] for v in vals),
              "load": max(v[1]["load"] for v in vals)}
        out.append(row(op, width, {"phase": "decode", "tokens": 1, "context": 0, "batch": batch},
                       sum(v[0] for v in vals) / len(vals), st))
    return out


def _attention_share(config: Any) -> float:
    """A full-width layer's parameters that are not its MLP's, as a fraction."""
    from .modeling import ParamCounter

    c = ParamCounter(config)
    return c.per_layer / (c.per_layer + c.per_channel * int(config.intermediate_size))

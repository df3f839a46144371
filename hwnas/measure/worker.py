"""Run measurements of one graph, in this process or (the default) in a fresh worker process.

A fresh process per graph isolates measurements from each other (allocator state, caches, other
graphs' threads), as HW-NAS-Bench and optimum-benchmark do. The request and the reply are JSON:
`python -m hwnas.measure.worker < request.json` prints one reply line.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import Backend, Measurement, backend_class, pin_cores, set_thread_env
from .graphs import GraphSpec, graph_cache_dir, graph_io_for, touch_graph, trim_graph_cache

REPLY_MARK = "HWNAS-WORKER-REPLY "


@dataclass
class Task:
    """One shape to time: prefill of `tokens`, or decode at `context` tokens (see Backend.decode)."""

    phase: str
    tokens: int = 1
    context: int = 0
    batch: int = 1
    steps: int | None = None  # None: as many as make one sample last min_sample_ms


@dataclass
class WorkerResult:
    """What a worker returns: measurements in task order plus what they ran on."""

    measurements: list[Measurement]
    device: str
    versions: dict[str, str]
    prepare_s: float
    peak_mem_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


def check_weight_formats(cls: type[Backend], spec: GraphSpec) -> None:
    """A graph whose weights are to be stored in formats the backend does not run is refused (it
    would otherwise be timed in fp32 under a compressed name)."""
    from hwnas.compression import check_formats
    from hwnas.errors import BackendError
    from hwnas.subnet import Subnet

    comp = Subnet.from_dict(spec.subnet).compression if spec.kind == "model" and spec.subnet else None
    wanted = [*([spec.weights] if spec.weights else []), *(comp.formats() if comp else [])]
    check_formats(wanted, cls.WEIGHT_FORMATS, f"backend {cls.NAME}", BackendError)


def run_tasks(backend: str, config: dict[str, Any], spec: GraphSpec, tasks: list[Task],
              workdir: str | Path | None = None, loaded: Any = None) -> WorkerResult:
    """Prepare the graph on the backend and time every task, in this process."""
    from .backend import ResourceSampler
    from .graphs import build

    cls = backend_class(backend)
    ok, why = cls.available()
    if not ok:
        from hwnas.errors import BackendError

        raise BackendError(f"backend {backend} is not available: {why}")
    if workdir is None:  # an exported artifact's files carry their own formats
        check_weight_formats(cls, spec)
    cfg = cls.CONFIG.from_dict(config)
    import torch

    torch.set_num_threads(cfg.threads)
    be = cls(cfg)
    cached = not workdir
    workdir = Path(workdir) if workdir else graph_cache_dir(spec)
    import psutil

    baseline_mb = psutil.Process().memory_info().rss / 1e6  # interpreter + libraries, before the graph
    with ResourceSampler() as mem:
        t0 = time.perf_counter()
        if loaded is None and cls.has_artifacts(workdir, cfg):
            module, io = None, graph_io_for(spec, workdir)  # converted before: no torch weights here
        else:
            module, io = build(spec, loaded)
        be.prepare(module, io, workdir)
        if cached:
            touch_graph(workdir)
            trim_graph_cache(keep=workdir)
        del module  # runtimes hold their own copy; the timed peak RSS should not count torch's
        gc.collect()
        _release_freed_memory()
        prepare_s = time.perf_counter() - t0
        ready_at = time.time()  # wall clock: when the first timed run can start (callers time graph cost)
        out = []
        for t in tasks:
            m = be.prefill(t.tokens, t.batch) if t.phase == "prefill" else be.decode(t.context, t.batch, t.steps)
            out.append(m)
        close = getattr(be, "close", None)
        if close:
            close()
    return WorkerResult(out, be.device(), cls.versions(), prepare_s, mem.peak_mb,
                        extra={"baseline_mb": round(baseline_mb, 1), "ready_at": ready_at, "cpus": _cpus(),
                               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")})


def _cpus() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return None


def convert_graph(backend: str, config: dict[str, Any], spec: GraphSpec, workdir: str | Path,
                  loaded: Any = None) -> bool:
    """Convert the graph into `workdir` in this process if the backend overrides `Backend.convert`;
    False when it converts inside `prepare` instead (a worker process must do it)."""
    from .graphs import build, save_graph_io

    cls = backend_class(backend)
    if cls.convert.__func__ is Backend.convert.__func__:
        return False
    module, io = build(spec, loaded)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cls.convert(module, io, workdir, cls.CONFIG.from_dict(config))
    save_graph_io(io, workdir)
    return True


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps multi-MB weight buffers otherwise), so the
    peak RSS measured next is the runtime's, not what conversion left behind."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def run_isolated(backend: str, config: dict[str, Any], spec: GraphSpec, tasks: list[Task],
                 timeout_s: float = 1800, workdir: str | Path | None = None) -> WorkerResult:
    """Same as `run_tasks`, in a fresh `python -m hwnas.measure.worker` process (and, for a
    backend that converts the graph, the conversion in one before it). `workdir`: a folder that
    already holds the backend's files (an exported artifact), so the measuring process only loads
    and runs them and its peak RSS is the artifact's."""
    request = {"backend": backend, "config": config, "graph": spec.to_dict(),
               "tasks": [t.__dict__ for t in tasks], "workdir": str(workdir) if workdir else None}
    env = dict(os.environ)
    threads = int(config.get("threads", 1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cls = backend_class(backend)
    resolved = cls.CONFIG.from_dict(config)  # the options' defaults decide placement too
    request["pin"] = resolved.pin
    if resolved.hugepages:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), HUGEPAGES_TUNABLE)))
    if workdir is None:
        check_weight_formats(cls, spec)
    where = Path(workdir) if workdir else graph_cache_dir(spec)
    if cls.CONVERTS and tasks and not cls.has_artifacts(where, resolved):
        # convert before the measuring process starts, so it never holds torch or exporter memory:
        # here (a composed whole model takes seconds), or in a process of its own
        if not convert_graph(backend, config, spec, where):
            _call_worker({**request, "tasks": []}, env, timeout_s, backend)
    if not workdir:  # the cache: this graph is the most recently used; the least recently used go
        touch_graph(where)
        trim_graph_cache(keep=where)
    reply = _call_worker(request, env, timeout_s, backend)
    ms = [Measurement(**m) for m in reply["measurements"]]
    return WorkerResult(ms, reply["device"], reply["versions"], reply["prepare_s"], reply["peak_mem_mb"],
                        extra=reply.get("extra") or {})


def _call_worker(request: dict[str, Any], env: dict[str, str], timeout_s: float, backend: str) -> dict[str, Any]:
    from hwnas.errors import BackendError

    proc = subprocess.run([sys.executable, "-m", "hwnas.measure.worker"], input=json.dumps(request),
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    reply = None
    for line in proc.stdout.splitlines():
        if line.startswith(REPLY_MARK):
            reply = json.loads(line[len(REPLY_MARK):])
    if reply is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{backend} worker exited with {proc.returncode} and no reply:\n{tail}")
    if not reply["ok"]:
        if reply.get("user_error"):
            raise BackendError(reply["error"])
        raise RuntimeError(f"{backend} worker failed: {reply['error']}")
    return reply


HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) on its mmap'd chunks


def _main() -> int:
    request = json.loads(sys.stdin.read())
    threads = int(request["config"].get("threads", 1))
    if request.get("pin", request["config"].get("pin")):
        pin_cores(threads)
    set_thread_env(threads)
    import traceback

    from hwnas.errors import HwnasUserError

    try:
        import hwnas  # noqa: F401  (registers per-layer-width model classes)

        res = run_tasks(request["backend"], request["config"], GraphSpec.from_dict(request["graph"]),
                        [Task(**t) for t in request["tasks"]], workdir=request.get("workdir"))
        reply = {"ok": True, "measurements": [m.to_dict(samples=True) for m in res.measurements], "device": res.device,
                 "versions": res.versions, "prepare_s": res.prepare_s, "peak_mem_mb": res.peak_mem_mb,
                 "extra": res.extra}
    except HwnasUserError as exc:
        reply = {"ok": False, "user_error": True, "error": str(exc)}
    except Exception as exc:  # reported to the parent with its traceback
        traceback.print_exc()
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(REPLY_MARK + json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())

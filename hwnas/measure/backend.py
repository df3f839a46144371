"""The backend interface: prepare a graph, time prefill and decode, return typed measurements.

A backend is a subclass of `Backend` with a `NAME`, a config dataclass (`CONFIG`), `available()`,
`versions()`, `prepare(graph, workdir)`, and three small hooks the shared timing loop drives:
`load_past(tensors)` (untimed: put a KV cache of length C in place), `step(x)` (timed: run the graph
once, keeping the new cache). Measurement hygiene (warm-ups, repeats, median/p90/CV,
re-measure-and-flag above a CV threshold, peak RSS, other processes' CPU load) lives here once.

Discovery is by the `hwnas.backends` entry-point group only; listing backends imports nothing heavy.
What else a plugin brings is declared on its class too: the weight formats it runs
(`WEIGHT_FORMATS`), a one-time setup step (`SETUP` / `setup`, run by `hwnas backends --setup NAME`)
and artifact formats it writes itself (`register_formats`), so the core names no backend.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import psutil

from hwnas.versions import dist_versions  # noqa: F401 - plugins import it from here

ENTRY_POINT_GROUP = "hwnas.backends"


LOAD_REASON = "load"
MAX_LOAD_ENV = "HWNAS_MAX_LOAD"


def default_max_load() -> float:
    """Other processes' load (cores) tolerated while timing: 0.5, or $HWNAS_MAX_LOAD (a shared
    machine or CI, where the figures are not the point, may raise it; a bad value is ignored)."""
    try:
        return max(0.0, float(os.environ.get(MAX_LOAD_ENV, "0.5")))
    except ValueError:
        return 0.5
_POSITIVE = {"threads", "repeats", "max_repeats"}  # other numeric options may be 0, none negative


@dataclass
class BackendConfig:
    """Options every backend shares; subclasses add their own fields."""

    threads: int = 1
    warmup: int = 2
    # minimum timed repeats. 5, not 15: re-measured in fresh workers, the median of the first 5 of 15
    # repeats agreed as well as all 15 (SmolLM2 on ORT, 10 sub-networks: decode 100 % within +-5 % either
    # way) and 10 warm-ups + 40 repeats did no better at 2.5x the cost (docs/results.md, "Where the
    # noise comes from"); short calls still repeat until `min_time_s` has been timed
    repeats: int = 5
    min_time_s: float = 0.5  # keep repeating (up to max_repeats) until this much was timed
    max_repeats: int = 100
    min_sample_ms: float = 5.0  # short calls are looped until one sample lasts this long
    cv_threshold: float = 0.05  # robust CV above this: measure again; still above: flagged
    retries: int = 1
    # Other processes' CPU use (cores) tolerated while timing. A bandwidth hog on another core
    # moves the median without raising the CV, so load is checked on its own: above it, wait
    # `load_wait_s` x attempt and measure again, up to `load_retries` times; still above: flagged
    # with reason "load" (profile / latency fit / bench then refuse to use it; see LOAD_REASON).
    max_load: float = field(default_factory=lambda: default_max_load())
    load_retries: int = 2
    load_wait_s: float = 2.0
    # Process placement of an isolated measuring worker (see docs/results.md, "Where the noise comes
    # from"): `pin` binds it to `threads` cores of its allowed set, the last ones (the scheduler cannot
    # migrate it mid-measurement); `hugepages` has glibc back large allocations (weights, KV cache)
    # with transparent huge pages where the kernel's THP mode is `madvise` (GLIBC_TUNABLES).
    pin: bool = False
    hugepages: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BackendConfig:
        """Build the config from user-facing keys; an unknown key or a value of the wrong type is a
        `BackendError` naming the fields there are (never silently dropped)."""
        from hwnas.errors import BackendError

        known = {f.name: f for f in fields(cls)}
        data = dict(data or {})
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BackendError(f"unknown option {unknown[0]!r} for this backend; its options are "
                               f"{', '.join(sorted(known))}")
        for k, v in data.items():
            f = known[k]
            want = type(f.default if f.default is not MISSING else
                        f.default_factory() if f.default_factory is not MISSING else None)
            if want is type(None):
                continue
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = {bool: isinstance(v, bool), float: number, int: number and isinstance(v, int)}.get(want, isinstance(v, want))
            if not ok:
                raise BackendError(f"option {k}={v!r} must be of type {want.__name__}")
            if want in (int, float) and (v < 0 or (k in _POSITIVE and v == 0)):
                raise BackendError(f"option {k}={v!r} must be {'positive' if k in _POSITIVE else 'at least 0'}")
        return cls(**data)


@dataclass
class Measurement:
    """One timed shape: milliseconds per call (decode: per generated token)."""

    phase: str  # "prefill" or "decode"
    tokens: int
    context: int
    batch: int
    median_ms: float
    p90_ms: float
    cv: float  # robust: 1.4826 * MAD / median (see summarize)
    repeats: int
    peak_mem_mb: float
    threads: int
    load: float  # other processes' CPU use during timing, in cores (0 = machine otherwise idle)
    flagged: bool = False
    samples_ms: list[float] = field(default_factory=list, repr=False)
    cv_raw: float = 0.0  # stdev / mean, outliers included
    flag_reason: str = ""  # "" | "noisy" (CV above the threshold) | "load" (other processes above max_load)
    attempts: int = 1  # timing windows taken (re-measured when noisy or loaded)
    min_ms: float = 0.0  # fastest sample (0.0 in records written before it was kept)
    p10_ms: float = 0.0

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


class ResourceSampler:
    """Peak RSS of this process (and its children, for runtimes that run in one) over a window.

    psutil samples RSS every 50 ms in a background thread (sparse, so the sampler does not steal
    the pinned core from the timed work); on Linux the kernel's exact high-water mark (VmHWM,
    reset through /proc/self/clear_refs) is read as well and the larger value is kept."""

    def __init__(self, interval_s: float = 0.05, children: bool = True) -> None:
        self.interval = interval_s
        self.children = children
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = self.proc.memory_info().rss
        if self.children:
            for child in self.proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _hwm() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def __enter__(self) -> ResourceSampler:
        self._kernel = self._reset_hwm()
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if self._kernel:
            own_hwm = self._hwm()
            children = self._rss() - self.proc.memory_info().rss if self.children else 0
            self.peak = max(self.peak, own_hwm + children)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


class LoadMeter:
    """Other processes' CPU use over a window: machine busy time minus this process tree's."""

    def __init__(self) -> None:
        self.proc = psutil.Process()

    def _own(self) -> float:
        total = sum(self.proc.cpu_times()[:2])
        for child in self.proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> LoadMeter:
        self._t0, self._busy0, self._own0 = time.perf_counter(), _busy(), self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        other = (_busy() - self._busy0) - (self._own() - self._own0)
        self.cores = max(0.0, other / wall)


def _busy() -> float:
    t = psutil.cpu_times()
    # steal (the hypervisor running other guests) is not counted: nothing on this machine can stop it
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def percentile(samples: Sequence[float], q: float) -> float:
    """The sample at rank round(q * (n - 1)) of the sorted samples (a measured value, not interpolated)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(samples: list[float]) -> tuple[float, float, float, float]:
    """median, p90, robust CV (1.4826 * MAD / median) and plain CV (stdev / mean) of timings.

    The robust CV decides flagging: on a shared machine a few samples are interrupted for whole
    scheduler slices, which blows up stdev/mean without moving the median that is stored; the
    plain CV and p90 are kept so the tail stays visible."""
    med = statistics.median(samples)
    p90 = percentile(samples, 0.9)
    if len(samples) < 2 or med <= 0:
        return med, p90, 0.0, 0.0
    mad = statistics.median(abs(x - med) for x in samples)
    return med, p90, 1.4826 * mad / med, statistics.pstdev(samples) / statistics.mean(samples)


class Backend:
    """Base class of a runtime plugin. Subclasses set NAME and CONFIG and implement the hooks."""

    NAME: ClassVar[str] = ""
    CONFIG: ClassVar[type[BackendConfig]] = BackendConfig
    STATIC_SHAPES: ClassVar[bool] = False  # True: decode steps reuse the same cache length

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or self.CONFIG()
        self.io = None

    # --- discovery and identity -------------------------------------------------------------
    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Whether this backend can run here, and why not."""
        return True, ""

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Library versions that determine its timings (recorded in every profile)."""
        return {}

    def device(self) -> str:
        """The device this backend runs on, in words."""
        from hwnas.fingerprint import cpu_model

        return f"cpu:{cpu_model()}"

    CONVERTS: ClassVar[bool] = False  # True: prepare() writes converted graphs into the workdir
    # weight formats this runtime runs besides fp32, as `hwnas.compression.Scheme`s (the numerics its
    # quantization library produces): what a space's compression genes may propose for it. A
    # backend that lists any applies the graph module's `weights` plan in `convert` / `prepare`.
    WEIGHT_FORMATS: ClassVar[dict[str, Any]] = {}
    # graph kinds it can time (`graphs.KINDS`); one with whole networks only ("model",) is profiled by
    # network differences (`hwnas.profile`)
    KINDS: ClassVar[tuple[str, ...]] = ("model", "attention", "mlp", "head")
    # what `hwnas backends --setup NAME` makes for this runtime, in words ("": it needs no setup step),
    # e.g. a private venv for a runtime whose pins clash with hwnas's; `setup` makes it
    SETUP: ClassVar[str] = ""
    # where the formats it declares (`register_formats`) come in `hwnas.export.FORMATS`, and so in every
    # listing of them: plugins register in this order (ties by name), after the core's `hf`
    FORMAT_ORDER: ClassVar[int] = 100

    @classmethod
    def setup(cls, log: Callable[[str], None]) -> None:
        """Make what `SETUP` names (idempotent), reporting progress and the result through `log`."""
        raise NotImplementedError

    @classmethod
    def register_formats(cls, register: Callable[..., Any]) -> None:
        """Declare the artifact formats this plugin writes itself (`hwnas export --format NAME`) by
        calling `register(name, description, precision, write, **options)` once per format: the
        arguments of `hwnas.export.register_format`, this backend measuring the artifact; `write`
        and an option's `check` take an `hwnas.export.ExportContext`. Called once, when
        `hwnas.export` is imported, so it must import nothing heavy."""

    @classmethod
    def has_artifacts(cls, workdir: Path, config: Any) -> bool:
        """Whether `prepare` can run from files already converted into `workdir` (no torch module)."""
        return False

    @classmethod
    def convert(cls, module: Any, io: Any, workdir: Path, config: Any) -> None:
        """Write this runtime's files for the graph into `workdir` (afterwards `has_artifacts` holds),
        without loading them. Called in the process that builds the graph (the driver, for a whole
        model composed in seconds), so the measuring worker only loads and runs files. A backend
        that does not override it converts inside `prepare`, in a worker process of its own."""
        raise NotImplementedError

    # --- hooks --------------------------------------------------------------------------------
    def prepare(self, module: Any, io: Any, workdir: Path) -> None:
        """Convert/compile the graph (an `onnx_export` module with its `GraphIO`) for this runtime.
        `module` is None when `has_artifacts(workdir)`: load the converted files instead."""
        raise NotImplementedError

    def load_past(self, past: list[Any]) -> None:
        """Put a KV cache in place (torch tensors); untimed."""
        raise NotImplementedError

    def step(self, x: Any) -> None:
        """Run the graph once on `x` (torch tensor), keeping the returned cache as the next past."""
        raise NotImplementedError

    def outputs(self) -> Any:
        """The first output of the last step, as a numpy array (for correctness checks)."""
        raise NotImplementedError

    def save_cache(self) -> Any:
        """An opaque handle on the KV cache as it is now, for `restore_cache` (scoring several
        continuations of one context after one prefill); None when the runtime cannot keep one."""
        return None

    def restore_cache(self, handle: Any) -> None:
        """Put back the cache `save_cache` returned."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued work (GPU backends)."""

    def timer(self) -> Callable[[Callable[[], None]], float]:
        """How one call is timed, in ms (CUDA backends use events)."""
        def run(fn: Callable[[], None]) -> float:
            t0 = time.perf_counter()
            fn()
            self.synchronize()
            return (time.perf_counter() - t0) * 1e3
        return run

    # --- measurements ---------------------------------------------------------------------------
    def prefill(self, tokens: int, batch: int = 1) -> Measurement:
        """Time a prefill of `tokens` tokens from an empty cache. Short calls are looped so that
        one sample lasts at least `min_sample_ms` (a sample is then the mean of its calls)."""
        x = self.io.make_x(batch, tokens)
        empty = self.io.make_past(batch, 0)

        def once() -> None:
            self.load_past(empty)
            self.step(x)

        k = self._calibrate(once, cap=256)

        def run() -> None:
            for _ in range(k):
                once()

        return self._measure("prefill", tokens, 0, batch, lambda: None, run, k)

    def decode(self, context: int, batch: int = 1, steps: int | None = None) -> Measurement:
        """Time one-token steps with a KV cache. `steps` given: a sample is the mean step time of
        `steps` consecutive steps after a cache of `context` tokens (generation). `steps=None`
        (operator profiling): as many steps as make a sample last `min_sample_ms`, at most
        context/4, starting at context - steps/2 so they centre on `context`. Static-shape runtimes
        re-run at the same cache length instead of growing it."""
        x = self.io.make_x(batch, 1)
        start = context
        if steps is None:
            self.load_past(self.io.make_past(batch, context))
            cap = max(1, context // 4) if self.io.n_layers_past and not self.STATIC_SHAPES else 256
            steps = self._calibrate(lambda: self.step(x), cap=cap)
            if self.io.n_layers_past and not self.STATIC_SHAPES:
                start = context - steps // 2
        past = self.io.make_past(batch, start)
        n = steps

        def setup() -> None:
            self.load_past(past)

        def run() -> None:
            for _ in range(n):
                self.step(x)

        return self._measure("decode", 1, context, batch, setup, run, n)

    def _calibrate(self, once: Callable[[], None], cap: int) -> int:
        """How many calls make one sample last `min_sample_ms` (1 for slow calls)."""
        once()  # first call may compile / allocate
        t0 = time.perf_counter()
        once()
        ms = (time.perf_counter() - t0) * 1e3
        if ms <= 0:
            return cap
        return int(max(1, min(cap, -(-self.config.min_sample_ms // ms))))

    def _measure(self, phase: str, tokens: int, context: int, batch: int, setup: Callable[[], None],
                 run: Callable[[], None], per: int) -> Measurement:
        cfg = self.config
        timer = self.timer()

        def collect() -> list[float]:
            samples: list[float] = []
            t_start = time.perf_counter()
            while len(samples) < cfg.max_repeats and (
                    len(samples) < cfg.repeats or time.perf_counter() - t_start < cfg.min_time_s):
                setup()
                samples.append(timer(run) / per)
            return samples

        for _ in range(cfg.warmup):
            setup()
            run()
        return self._collect_measurement(phase, tokens, context, batch, collect)

    def _collect_measurement(self, phase: str, tokens: int, context: int, batch: int,
                             collect: Callable[[], list[float]]) -> Measurement:
        """Run `collect` under memory and load sampling; re-measure (bounded) when the samples were
        too noisy or other processes were busy meanwhile, then flag what is still off."""
        cfg = self.config
        result = None
        noisy_left, load_left, attempts = cfg.retries, cfg.load_retries, 0
        while True:
            attempts += 1
            gc_was_enabled = gc.isenabled()
            gc.disable()  # as timeit does: a collection inside a sample is not the graph's time
            try:
                with ResourceSampler() as mem, LoadMeter() as load:
                    samples = collect()
            finally:
                if gc_was_enabled:
                    gc.enable()
            med, p90, cv, cv_raw = summarize(samples)
            loaded, noisy = load.cores > cfg.max_load, cv > cfg.cv_threshold
            result = Measurement(phase, tokens, context, batch, med, p90, cv, len(samples), mem.peak_mb,
                                 cfg.threads, round(load.cores, 3), loaded or noisy, samples, cv_raw,
                                 LOAD_REASON if loaded else ("noisy" if noisy else ""), attempts,
                                 min(samples), percentile(samples, 0.1))
            if loaded and load_left > 0:
                load_left -= 1
                time.sleep(cfg.load_wait_s * (cfg.load_retries - load_left))
            elif noisy and not loaded and noisy_left > 0:
                noisy_left -= 1
            else:
                return result


def pin_cores(threads: int) -> list[int]:
    """Bind this process to the last `threads` CPUs of its allowed set (the first ones take more of
    the machine's interrupts and housekeeping); returns them (empty where affinity is not supported)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        cores = allowed[-max(1, threads):]
        os.sched_setaffinity(0, cores)
        return cores
    except (AttributeError, OSError):
        return []


PROBE_BUDGET_S = 0.6  # bandwidth copies + GEMMs: ~16 repeats of each on a slow 2-core VM


def speed_probe(threads: int = 1, pin: bool = False) -> dict[str, float]:
    """The machine's speed right now, as the latency model normalizes by (`hwnas.fingerprint.
    measure_roofline`: streaming bandwidth, fp32 GEMM), taken on the cores a measuring worker with
    these options runs on, just before it runs; this process's affinity is restored after."""
    from hwnas.fingerprint import measure_roofline

    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not on Linux
        return measure_roofline(threads, PROBE_BUDGET_S)
    try:
        if pin:
            pin_cores(threads)
        return measure_roofline(threads, PROBE_BUDGET_S)
    finally:
        os.sched_setaffinity(0, allowed)


def worker_speed_probe(backend: str, config: dict[str, Any]) -> dict[str, float]:
    """`speed_probe` on the cores a measuring worker of `backend` with these options will use."""
    cfg = backend_class(backend).CONFIG.from_dict(config)
    return speed_probe(cfg.threads, pin=cfg.pin)


def backend_names() -> list[str]:
    """Names registered in the `hwnas.backends` entry-point group (nothing is imported)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def backend_class(name: str) -> type[Backend]:
    """Import and return one backend's class."""
    from hwnas.errors import BackendError

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise BackendError(f"entry point {ep.value} is not a hwnas Backend subclass")
            return cls
    raise BackendError(f"unknown backend '{name}'; installed: {', '.join(backend_names()) or 'none'} "
                       "(run `hwnas backends` to see which are available)")


def set_thread_env(threads: int) -> None:
    """Thread count for libraries that read the environment at import (set before importing them)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)

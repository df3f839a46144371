"""Device fingerprint: what the timings in a profile were measured on, plus roofline figures.

Static facts (CPU model, cores, ISA flags, memory, GPU, OS, Python) come from the system; memory
bandwidth and peak FLOP/s come from two small torch microbenchmarks run with the profile's thread
count, so the latency model can bound each prediction (decode >= bytes / bandwidth).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
             "amx_bf16", "amx_int8", "sse4_2", "neon", "asimd", "sve")


@dataclass
class Fingerprint:
    """Identity of a device for a profile (YAML-friendly)."""

    cpu_model: str
    physical_cores: int
    logical_cpus: int
    isa: list[str]
    memory_gb: float
    os: str
    python: str
    gpu: dict[str, Any] | None = None
    affinity: list[int] | None = None  # CPUs this process may run on (taskset)
    roofline: dict[str, float] = field(default_factory=dict)  # bandwidth_gbs, peak_gflops, threads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def slug(self) -> str:
        """A folder name for this device: cpu model (or GPU) + core count."""
        name = self.gpu["name"] if self.gpu else self.cpu_model
        name = re.sub(r"\(r\)|\(tm\)|cpu|processor|\d+-core", "", name.lower())
        name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        return f"{name}-{self.physical_cores}c" if not self.gpu else name


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()



def isa_flags() -> list[str]:
    """The ISA flags of this CPU that hwnas records (`ISA_FLAGS` present in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in ISA_FLAGS if f in present]
    except OSError:
        pass
    return []


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        import subprocess

        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, Exception):  # the driver version is optional
        pass
    return {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "driver": driver}


def measure_roofline(threads: int = 1, budget_s: float = 1.5) -> dict[str, float]:
    """Streaming bandwidth (GB/s, copy of 256 MB counted as read+write) and fp32 GEMM GFLOP/s."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 32 * 2**20  # 32M floats = 128 MB per buffer
        a = torch.ones(n)
        b = torch.empty(n)
        best_bw = 0.0
        t_end = time.perf_counter() + budget_s / 2
        while True:
            t0 = time.perf_counter()
            b.copy_(a)
            dt = time.perf_counter() - t0
            best_bw = max(best_bw, 2 * a.numel() * 4 / dt / 1e9)
            if time.perf_counter() > t_end:
                break
        del a, b
        m = 1024
        x, y = torch.randn(m, m), torch.randn(m, m)
        best_fl = 0.0
        t_end = time.perf_counter() + budget_s / 2
        while True:
            t0 = time.perf_counter()
            torch.mm(x, y)
            dt = time.perf_counter() - t0
            best_fl = max(best_fl, 2 * m**3 / dt / 1e9)
            if time.perf_counter() > t_end:
                break
    finally:
        torch.set_num_threads(old)
    return {"bandwidth_gbs": round(best_bw, 2), "peak_gflops": round(best_fl, 2), "threads": threads}


def fingerprint(threads: int = 1, roofline: bool = True) -> Fingerprint:
    """Describe this machine; `roofline=True` also runs the ~2 s bandwidth / FLOP/s benchmarks."""
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    return Fingerprint(
        cpu_model=cpu_model(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cpus=psutil.cpu_count(logical=True) or 1,
        isa=isa_flags(),
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        os=f"{platform.system()} {platform.release()}",
        python=sys.version.split()[0],
        gpu=_gpu(),
        affinity=affinity,
        roofline=measure_roofline(threads) if roofline else {},
    )

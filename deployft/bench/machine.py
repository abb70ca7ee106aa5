"""A description of the machine a benchmark ran on, and whether it was busy while it ran."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from ..manifest import library_versions

_INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                      "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "sve")
"""The CPU flags that decide which matmul kernels torch and ONNX Runtime can use."""


def cpu_info() -> dict[str, Any]:
    """CPU model name and the matmul-relevant flags, read from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    return {"model": model, "flags": sorted(f for f in _INTERESTING_FLAGS if f in flags),
            "arch": platform.machine()}


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine(device: str = "cpu") -> dict[str, Any]:
    """CPU model and flags, cores, memory, OS, Python, library versions and (on CUDA) the GPU."""
    import psutil

    memory = psutil.virtual_memory()
    info = {
        "cpu": cpu_info(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": library_versions(),
    }
    if device == "cuda":
        info["gpu"] = _gpu_info()
    return info


def _gpu_info() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_bytes": props.total_memory, "cuda": torch.version.cuda}


def busy_warning(before: list[float] | None, after: list[float] | None, threads: int, cores: int) -> str | None:
    """A warning when other work competed for the cores the benchmark used, else None.

    The benchmark itself keeps about `threads` cores busy; a 1-minute load average above the cores
    left free for everything else, before or after, means other processes were running too.
    """
    if before is None or after is None:
        return None
    busiest_idle = before[0]
    busiest_after = after[0] - min(threads, cores)
    worst = max(busiest_idle, busiest_after)
    if worst + min(threads, cores) > cores + 1.0:  # a little slack for the load our own setup left behind
        return (f"the machine was busy: 1-minute load average {before[0]} before and {after[0]} after, "
                f"on {cores} cores with {threads} benchmark threads; timings may be noisy, re-run on an idle machine")
    return None

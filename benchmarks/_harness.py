"""Measurement helpers shared by the benchmarks: peak extra resident memory of one call (Linux),
and median CPU/wall times of several calls timed in interleaved rounds."""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def peak_extra_mib(fn: Callable[[], T]) -> tuple[float, T]:
    """Extra resident memory (MiB) one call of ``fn`` needs over the current resident set; result."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    out = fn()
    return (_status_kib("VmHWM") - before) / 1024, out


def interleaved_times(
    calls: Mapping[str, Callable[[], object]], min_time: float, budget: float = 60.0
) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds per call, timed in rounds A B C …, A B C …: at least 3 rounds
    and ``min_time`` seconds, no new round after ``budget`` seconds."""
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    wall: dict[str, list[float]] = {k: [] for k in calls}
    start = time.perf_counter()
    while True:
        for name, fn in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
        elapsed = time.perf_counter() - start
        if (len(wall[name]) >= 3 and elapsed >= min_time) or elapsed >= budget:
            break
    return {
        k: {
            "cpu": statistics.median(cpu[k]),
            "wall": statistics.median(wall[k]),
            "runs": len(cpu[k]),
        }
        for k in calls
    }

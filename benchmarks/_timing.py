"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call (imports, JIT, caches)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    """The processor model (timings differ between machines: compare ratios measured in one run)."""
    import os
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def interleaved_ratio(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median times of ``baseline`` and ``candidate`` timed in alternation, and the median of their
    per-pair ratios: a machine whose speed drifts over a minute (a shared 2-core VM) biases a ratio of
    two separately timed medians, not a ratio taken pair by pair.

    :returns: ``(baseline seconds, candidate seconds, median ratio candidate / baseline)``.
    """
    import statistics
    import time

    baseline(), candidate()  # warm-up
    pairs = []
    for _ in range(repeats):
        start = time.perf_counter()
        baseline()
        middle = time.perf_counter()
        candidate()
        pairs.append((middle - start, time.perf_counter() - middle))
    return (statistics.median(b for b, _ in pairs), statistics.median(c for _, c in pairs),
            statistics.median(c / b for b, c in pairs))

"""Small timing helpers shared by the benchmarks (median and min-max of repeats)."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable


def time_repeats(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` + ``repeat`` times; seconds as median, min, max."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": repeat}


def fmt_range(stats: dict, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """'median (min-max) unit' of ``stats`` multiplied by ``scale``."""
    m, lo, hi = (stats[k] * scale for k in ("median", "min", "max"))
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f}){' ' + unit if unit else ''}"


def rate_stats(stats: dict, items: int) -> dict:
    """Convert time stats for ``items`` per call into items/s stats (min time -> max rate)."""
    return {"median": items / stats["median"], "min": items / stats["max"],
            "max": items / stats["min"], "n": stats["n"]}


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def stats_of(values) -> dict:
    """``time_repeats``-style summary (median, min, max, n) of already measured ``values``."""
    values = list(values)
    if not values:
        raise ValueError("stats_of needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def load_average() -> str:
    """The 1, 5 and 15-minute load averages: on a shared machine they explain slow absolute figures."""
    import os
    try:
        return ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"

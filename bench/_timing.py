"""Timing helpers shared by the benchmarks: interleaved medians and best-of runs."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round.

    Interleaving keeps a load change on the machine from landing on one side only.
    """
    for fn in fns.values():  # warm up: first runs allocate arenas
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def best(fn: Callable[[], object], repeat: int = 5) -> float:
    """Fewest seconds one call of `fn` took over `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)

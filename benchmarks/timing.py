"""Interleaved wall-clock timing with medians and inter-quartile ranges.

The variants of one comparison run round-robin (A, B, A, B, ...) after warm-up, so
that load from other processes on a shared machine hits them alike and their ratio
stays meaningful even when the absolute times drift. A variant may run in another
process (PyTorch): it is then a `SelfTimed` callable that returns its own
measured seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def summarize(seconds: list[float]) -> dict:
    """Median, quartiles, min and count of a list of seconds, in milliseconds, and
    the samples themselves in run order (the targets bootstrap their ratios)."""
    ms = np.asarray(seconds) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {
        "median_ms": float(med),
        "q1_ms": float(q1),
        "q3_ms": float(q3),
        "iqr_ms": float(q3 - q1),
        "min_ms": float(ms.min()),
        "n": int(ms.size),
        "samples_ms": [float(v) for v in ms],
    }


class SelfTimed:
    """Wraps a callable that runs one iteration elsewhere and returns its seconds."""

    def __init__(self, fn: Callable[[], float]):
        self.fn = fn

    def __call__(self) -> float:
        return self.fn()


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 2,
    sync: Callable[[object], object] = lambda out: out,
    settle: float = 0.0,
) -> dict[str, dict]:
    """Time each zero-argument callable `repeats` times, round-robin.

    Args:
      fns: name -> callable running one iteration.
      repeats: timed iterations per callable.
      warmup: untimed iterations per callable first (compilation, caches).
      sync: applied to each result before the clock stops, e.g.
        `jax.block_until_ready`.
      settle: seconds to sleep before each timed call, so that thread pools of
        the previous variant (which spin a while after their work) are idle.

    Returns:
      name -> `summarize` of its times.
    """
    for _ in range(warmup):
        for fn in fns.values():
            sync(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
            if isinstance(fn, SelfTimed):
                times[name].append(fn())
                continue
            start = time.perf_counter()
            sync(fn())
            times[name].append(time.perf_counter() - start)
    return {name: summarize(ts) for name, ts in times.items()}


def interleaved_steps(
    steps: dict,
    states: dict,
    batch,
    *,
    repeats: int,
    sync: Callable[[object], object] = lambda out: out,
) -> dict:
    """`interleaved` over train steps `steps[name](state, batch) -> (state,
    metrics)` that donate their state: each call threads `states[name]` (updated
    in place) into the next, and `sync` waits on the metrics."""

    def runner(name):
        def run():
            states[name], metrics = steps[name](states[name], batch)
            return metrics

        return run

    return interleaved({name: runner(name) for name in steps}, repeats=repeats,
                       sync=sync)  # fmt: skip

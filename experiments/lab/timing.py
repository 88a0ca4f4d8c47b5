"""The train-step time of every rule, measured interleaved.

On a shared machine, times taken one rule after another measure the load as
much as the rule. Here every round times each rule's compiled train step on the
same batch, one rule after the other, and the rounds repeat: each rule's median
over rounds, and its spread, then come from the same stretches of load, and
the ratio to backprop is the ratio of the medians.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from lab.runs import Steps

ROUNDS = 7  # rounds of every rule in turn
STEPS = 20  # steps per rule and round, timed together


def time_steps(
    steps: dict[str, Steps], batch, *, rounds: int = ROUNDS, per_round: int = STEPS
) -> dict[str, dict]:
    """Per rule: the milliseconds of one train step, median, min and max over
    `rounds`, each the mean of `per_round` steps on `batch` (after one warm-up
    step), and "ratio", the median over backprop's (None without backprop).

    Args:
        steps: rule name -> its compiled `Steps` (already compiled).
        batch: `(x, y)` of the task's batch shape.
    """
    states = {rule: s.fresh() for rule, s in steps.items()}
    for rule, s in steps.items():  # a first step, not timed
        states[rule] = jax.block_until_ready(s.train(states[rule], batch))[0]
    times: dict[str, list[float]] = {rule: [] for rule in steps}
    for _ in range(rounds):
        for rule, s in steps.items():
            state = states[rule]
            t0 = time.perf_counter()
            for _ in range(per_round):
                state, metrics = s.train(state, batch)
            jax.block_until_ready((state, metrics))
            times[rule].append(1e3 * (time.perf_counter() - t0) / per_round)
            states[rule] = state
    out = {
        rule: {
            "median_ms": float(np.median(t)),
            "min_ms": float(np.min(t)),
            "max_ms": float(np.max(t)),
            "rounds": rounds,
            "per_round": per_round,
        }
        for rule, t in times.items()
    }
    base = out.get("backprop", {}).get("median_ms")
    for entry in out.values():
        entry["ratio"] = entry["median_ms"] / base if base else None
    return out

"""The cost of the learning rules: one LeNet-5 train step at 28x28 under each rule,
as a ratio to backprop's ("custom").

    python -m benchmarks.rules [--quick] [--batch-size 64] [--repeats 30]

Every step is built with `make_train_step` and the state with
`create_train_state(..., grad=rule)`; all of them run round-robin after warm-up
(`timing.interleaved`), so load from other processes hits them alike. Direct
feedback alignment's target is one backward pass: a ratio near 1.
"""

from __future__ import annotations

import argparse
import platform

import jax
import numpy as np

from benchmarks import timing
from funcnn import models
from funcnn.training.optim import make_optimizer
from funcnn.training.step import create_train_state, make_train_step

RULES = (
    "custom",
    "feedback_alignment",
    "direct_feedback_alignment",
    "usf",
    "brsf",
    "frsf",
    "kolen_pollack",
)


def measure(batch_size: int, repeats: int, names=RULES) -> dict:
    """Times one step per rule; returns {rule: summarize(...)} and "ratio":
    {rule: median / backprop's median}."""
    model = models.lenet()
    optimizer = make_optimizer("momentum", 0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int32)
    steps, states = {}, {}
    for name in names:
        steps[name] = make_train_step(model, optimizer, grad=name)
        states[name] = create_train_state(model, (-1, 1, 28, 28), optimizer, grad=name)
        states[name], _ = steps[name](states[name], (x, y))  # compile

    times = timing.interleaved_steps(
        steps, states, (x, y), repeats=repeats, sync=jax.block_until_ready
    )
    base = times["custom"]["median_ms"]
    return {**times, "ratio": {n: times[n]["median_ms"] / base for n in names}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 8, 3 repeats")
    p.add_argument("--batch-size", type=int, default=None, help="default 64")
    p.add_argument("--repeats", type=int, default=None, help="default 30")
    args = p.parse_args(argv)
    batch_size = args.batch_size or (8 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 30)
    if batch_size < 1 or repeats < 1:
        p.error(
            f"expected --batch-size and --repeats >= 1, got {batch_size} and {repeats}."
        )
    result = measure(batch_size, repeats)
    device = jax.devices()[0]
    print(
        f"learning rules: LeNet-5 train step, batch {batch_size}x1x28x28, SGD "
        f"momentum, {repeats} interleaved repeats on {device.platform} "
        f"({device.device_kind}, {platform.machine()})"
    )
    for name in RULES:
        t = result[name]
        print(
            f"  {name:<26} median {t['median_ms']:8.2f} ms  IQR {t['iqr_ms']:6.2f} ms"
            f"  x{result['ratio'][name]:.2f}"
        )
    return result


if __name__ == "__main__":
    main()

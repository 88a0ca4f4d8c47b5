"""An optimizer whose peak learning rate and schedule length are values in its
state, not constants of the compiled train step.

`make_optimizer(name, lr, schedule="cosine", total_steps=T)` closes over `lr` and
`T`, so every candidate rate of a sweep compiles its own train step (seconds on a
CPU, more than a small run's training). `cosine_optimizer` makes the same
updates with `lr` and `T` stored in the optimizer state: a train step compiled
for one of them runs all of them. Every optimizer of `make_optimizer` is linear
in its rate (the update is `-rate * direction`, weight decay included), so
scaling the updates of `make_optimizer(name, 1.0)` by the scheduled rate gives
the same updates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcnn.training import make_optimizer


class CosineState(NamedTuple):
    """The state of `cosine_optimizer`.

    `funcnn.learning_rate(state)` reads `hyperparams["learning_rate"]`, the rate
    of the latest update (the peak before any).
    """

    inner: Any  # the state of make_optimizer(name, 1.0, ...)
    hyperparams: dict  # float32 scalars: "learning_rate", "peak_lr", "total_steps"
    count: jax.Array  # shape=(), int32: updates so far


def cosine_optimizer(
    name: str, peak_lr: float, *, total_steps: int, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """`make_optimizer(name, peak_lr, weight_decay=..., schedule="cosine",
    total_steps=...)`, with `peak_lr` and `total_steps` kept in the state.

    The rate of update t (from 0) is `peak_lr * (1 + cos(pi * min(t, T) / T)) / 2`,
    as optax's `cosine_decay_schedule`. Two optimizers of the same `name` and
    `weight_decay` share their `update`: a train step built with one runs a
    state made by the other.

    Raises:
        ValueError, TypeError: as `make_optimizer` for the same arguments.
    """
    make_optimizer(  # the checks of make_optimizer, with the same messages
        name, peak_lr, weight_decay=weight_decay, schedule="cosine",
        total_steps=total_steps,
    )  # fmt: skip
    core = make_optimizer(name, 1.0, weight_decay=weight_decay)

    def init(params) -> CosineState:
        hyper = {
            "learning_rate": jnp.asarray(peak_lr, jnp.float32),
            "peak_lr": jnp.asarray(peak_lr, jnp.float32),
            "total_steps": jnp.asarray(total_steps, jnp.float32),
        }
        return CosineState(core.init(params), hyper, jnp.zeros((), jnp.int32))

    def update(updates, state: CosineState, params=None):
        hyper = state.hyperparams
        total = hyper["total_steps"]
        done = jnp.minimum(state.count.astype(jnp.float32), total) / total
        rate = hyper["peak_lr"] * 0.5 * (1.0 + jnp.cos(jnp.pi * done))
        updates, inner = core.update(updates, state.inner, params)
        updates = jax.tree_util.tree_map(lambda u: u * rate.astype(u.dtype), updates)
        hyper = {**hyper, "learning_rate": rate}
        return updates, CosineState(inner, hyper, state.count + 1)

    return optax.GradientTransformation(init, update)

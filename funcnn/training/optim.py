"""Optimizers and learning-rate schedules, built from optax.

`make_optimizer` returns an `optax.GradientTransformation` whose learning rate is
injected with `optax.inject_hyperparams`, so the rate used at each update lives in
the optimizer state and `learning_rate(opt_state)` can read it back for logging.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from typing import Any, cast

import jax
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def _number(func: str, name: str, value: Any) -> float:
    """`value` as a float, refusing bools, strings and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{func}: expected {name} to be a number, got {type(value).__name__} "
            f"{value!r}."
        )
    return float(value)


def _in_range(
    func: str, name: str, value: Any, low: float, high: float, interval: str
) -> float:
    """Refuses `value` outside `interval` ("[low, high)", "(low, inf)", ...);
    NaN is outside every interval, and so is inf unless `high` is inf."""
    v = _number(func, name, value)
    ok = (low <= v if interval[0] == "[" else low < v) and (
        v < high if interval[-1] == ")" else v <= high
    )
    if not ok or math.isnan(v) or (math.isinf(v) and not math.isinf(high)):
        raise ValueError(f"{func}: expected {name} in {interval}, got {value!r}.")
    return v


def _count(func: str, name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{func}: expected {name} to be an int, got bool {value}.")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{func}: expected {name} to be an int, got {type(value).__name__} "
            f"{value!r}. Round it, e.g. int(round(epochs * steps_per_epoch))."
        ) from None
    if count < 0:
        raise ValueError(f"{func}: expected {name} >= 0, got {count}.")
    return count


def make_schedule(
    learning_rate: float,
    schedule: str = "constant",
    *,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    step_boundaries: tuple[float, ...] = (0.5, 0.75),
    step_factor: float = 0.1,
) -> Callable[[Any], Any]:
    """A learning-rate schedule `step -> rate` (an optax schedule).

    Args:
        learning_rate: the peak rate, > 0.
        schedule: `"constant"`; `"cosine"`, which decays from the peak to 0 at
            `total_steps`; or `"step"`, which multiplies the rate by `step_factor`
            at each fraction of `total_steps` in `step_boundaries`.
        total_steps: the length of training in updates; needed by "cosine" and
            "step".
        warmup_steps: updates of linear warm-up from 0 to the peak, before the
            schedule proper (which then spans `total_steps - warmup_steps`).
        step_boundaries: fractions in (0, 1) of `total_steps` for "step".
        step_factor: the factor applied at each boundary of "step".

    Returns:
        A function from the update count (int32 scalar) to the rate (float32).

    Raises:
        ValueError: for an unknown schedule, a missing `total_steps`, a rate
            that is not finite and > 0, a negative warm-up, boundaries outside
            (0, 1) or a factor that is not finite and > 0.
        TypeError: for a step count that is not an int.
    """
    func = "make_schedule"
    if schedule not in SCHEDULES:
        raise ValueError(f"{func}: expected schedule in {SCHEDULES}, got {schedule!r}.")
    if not _number(func, "learning_rate", learning_rate) > 0:
        raise ValueError(f"{func}: expected learning_rate > 0, got {learning_rate!r}.")
    _in_range(func, "learning_rate", learning_rate, 0.0, math.inf, "(0, inf)")
    warmup_steps = _count(func, "warmup_steps", warmup_steps)
    if total_steps is not None:
        total_steps = _count(func, "total_steps", total_steps)
    if schedule == "step":
        for fraction in step_boundaries:
            _in_range(func, "each step boundary", fraction, 0.0, 1.0, "(0, 1)")
        _in_range(func, "step_factor", step_factor, 0.0, math.inf, "(0, inf)")
    if schedule != "constant" and (total_steps is None or total_steps <= warmup_steps):
        raise ValueError(
            f"{func}: expected total_steps > warmup_steps (={warmup_steps}) for the "
            f"{schedule!r} schedule, got total_steps={total_steps!r}. Pass the "
            "number of updates, e.g. epochs * steps_per_epoch."
        )
    if schedule == "constant":
        main = optax.constant_schedule(learning_rate)
    elif schedule == "cosine":
        span = cast(int, total_steps) - warmup_steps  # checked above
        main = optax.cosine_decay_schedule(learning_rate, span)
    else:
        span = cast(int, total_steps) - warmup_steps
        main = optax.piecewise_constant_schedule(
            learning_rate,
            {int(round(f * span)): step_factor for f in sorted(step_boundaries)},
        )
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def _kernels_only(params):
    # Decay conv and dense kernels, not biases or BatchNorm scales: shrinking
    # those towards 0 only fights the normalisation and shifts activations.
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer by name, with schedule, weight decay and clipping.

    Args:
        name: `"sgd"`, `"momentum"` (SGD with heavy-ball momentum), `"nesterov"`
            (SGD with Nesterov momentum), `"adagrad"`,
            `"rmsprop"`, `"adam"` or `"adamw"`.
        learning_rate: the peak learning rate, > 0.
        momentum: the momentum of "momentum" and "nesterov".
        weight_decay: L2 decay of the kernels (arrays of rank >= 2). For all but
            "adamw" it is `optax.add_decayed_weights` before the optimizer, i.e.
            `weight_decay * w` joins the gradient; "adamw" decouples it, as in
            `optax.adamw`.
        schedule: see `make_schedule`.
        total_steps: see `make_schedule`.
        warmup_steps: see `make_schedule`.
        b1: Adam's first-moment decay ("adam", "adamw").
        b2: Adam's second-moment decay.
        eps: Adam's epsilon.
        clip_norm: if set, gradients are first clipped to this global norm.

    Returns:
        A `GradientTransformation`; `learning_rate(opt_state)` reads the rate
        of its latest update.

    Raises:
        ValueError: for an unknown name or a value outside its range: a
            learning rate that is not finite and > 0, weight_decay < 0,
            momentum, b1 or b2 outside [0, 1), eps or clip_norm not finite and
            > 0; NaN is outside every range.
        TypeError: for a value that is not a number.
    """
    func = "make_optimizer"
    if name not in OPTIMIZERS:
        raise ValueError(f"{func}: expected name in {OPTIMIZERS}, got {name!r}.")
    _in_range(func, "learning_rate", learning_rate, 0.0, math.inf, "(0, inf)")
    _in_range(func, "weight_decay", weight_decay, 0.0, math.inf, "[0, inf)")
    _in_range(func, "momentum", momentum, 0.0, 1.0, "[0, 1)")
    _in_range(func, "b1", b1, 0.0, 1.0, "[0, 1)")
    _in_range(func, "b2", b2, 0.0, 1.0, "[0, 1)")
    _in_range(func, "eps", eps, 0.0, math.inf, "(0, inf)")
    if clip_norm is not None:
        _in_range(func, "clip_norm", clip_norm, 0.0, math.inf, "(0, inf)")
    rate = make_schedule(
        learning_rate, schedule, total_steps=total_steps, warmup_steps=warmup_steps
    )

    def build(learning_rate):
        if name == "adamw":
            core = optax.adamw(
                learning_rate,
                b1,
                b2,
                eps,
                weight_decay=weight_decay,
                mask=_kernels_only,
            )
        else:
            core = {
                "sgd": lambda: optax.sgd(learning_rate),
                "momentum": lambda: optax.sgd(learning_rate, momentum=momentum),
                "nesterov": lambda: optax.sgd(
                    learning_rate, momentum=momentum, nesterov=True
                ),
                "adagrad": lambda: optax.adagrad(learning_rate),
                "rmsprop": lambda: optax.rmsprop(learning_rate),
                "adam": lambda: optax.adam(learning_rate, b1, b2, eps),
            }[name]()
            if weight_decay > 0:
                core = optax.chain(
                    optax.add_decayed_weights(weight_decay, _kernels_only), core
                )
        if clip_norm is not None:
            core = optax.chain(optax.clip_by_global_norm(clip_norm), core)
        return core

    return optax.inject_hyperparams(build)(learning_rate=rate)


def learning_rate(opt_state) -> jax.Array | None:
    """The learning rate of the latest update, read from an optimizer state.

    Works for states of `make_optimizer` optimizers (and any optax state holding
    an `inject_hyperparams` state with a "learning_rate"), inside or outside
    `jit`. The rate is the one the latest `update` used (the first rate before
    any update).

    Returns:
        A float32 scalar, or None if the state carries no injected rate.
    """
    hyper = getattr(opt_state, "hyperparams", None)
    if isinstance(hyper, dict) and "learning_rate" in hyper:
        return hyper["learning_rate"]
    if isinstance(opt_state, (tuple, list)):
        for sub in opt_state:
            found = learning_rate(sub)
            if found is not None:
                return found
    return None

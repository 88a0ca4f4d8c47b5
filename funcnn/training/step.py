"""Training and evaluation steps as pure functions of a `TrainState`.

`make_train_step` returns `train_step(state, batch) -> (state, metrics)`, jitted
by default. It is a pure function of its arguments: the PRNG key for Dropout is
split from `state.key` and the new key is stored in the returned state, so a run
is a deterministic function of its seed and its batches.

Non-finite protection is an explicit check inside the step, not
`optax.apply_if_finite`: when the loss, any gradient or any updated parameter is
not finite, the step keeps the old params, model state and optimizer state (the
step counter and key still advance) and reports `metrics["nonfinite"] = 1`.
Unlike `apply_if_finite`, it never gives up and applies a bad update after a run
of failures, and it also keeps BatchNorm statistics from absorbing NaNs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import rules
from funcnn.nn import probe
from funcnn.nn.core import Layer
from funcnn.ops import forward_mode_available
from funcnn.training import learned_feedback, precision
from funcnn.training.forward_grad import forward_value_and_grad
from funcnn.training.layer_metrics import alignment_metrics, weight_metrics
from funcnn.training.losses import accuracy, loss_fn
from funcnn.training.optim import learning_rate
from funcnn.training.step_checks import CheckedStep, check_optimizer


class TrainState(NamedTuple):
    """Everything a training run carries from step to step.

    Every leaf is an array, so the whole state saves with `save_checkpoint`.

    Attributes:
        params: the model's parameters, a pytree of float32 arrays keyed by layer
            path, e.g. `{"00_conv": {"w": (C_out, C_in, KH, KW), "b": (C_out,)}}`.
        model_state: the model's state from `model.init`, e.g. BatchNorm's
            running mean and variance of shape `(C,)`.
        opt_state: the optax optimizer's state for `params`.
        step: int32 of shape `()`: the train steps taken so far.
        key: uint32 of shape `(2,)`: the raw PRNG key the steps split.
    """

    params: Any  # pytree of float32 arrays from model.init, e.g. {"00_conv": {...}}
    model_state: Any  # pytree from model.init: BatchNorm running mean/var, shape (C,)
    opt_state: Any  # optax state for params, or (params, feedback) with feedback
    step: jax.Array  # shape=(), int32: train_step calls so far
    key: jax.Array  # shape=(2,), uint32: raw PRNG key (jax.random.PRNGKey) to split
    # {layer path: B} of the layers whose rule learns B (Kolen-Pollack), each of
    # w's shape and dtype; None without such a rule. See training.learned_feedback.
    feedback: Any = None


def create_train_state(
    model: Layer,
    input_shape: tuple[int, ...],
    optimizer,
    *,
    seed: int = 0,
    grad: Any = None,
) -> TrainState:
    """Initialises the model and optimizer.

    Args:
        model: a `Layer`, e.g. `funcnn.models.lenet(input_hw=(8, 8))`.
        input_shape: the model's input shape with the batch axis, e.g.
            `(-1, 1, 8, 8)` (the batch size may be -1).
        optimizer: an `optax.GradientTransformation`, e.g. from `make_optimizer`.
        seed: seeds the parameter initialisation and the training key.
        grad: the rules the state will train with, as for `make_train_step`.
            Needed only for a rule that learns its feedback weights
            ("kolen_pollack"): the state then holds each such layer's initial
            B in `feedback`, and `opt_state` is the optimizer's state for
            `(params, feedback)` (`funcnn.training.learned_feedback`).

    Returns:
        A `TrainState` at step 0.
    """
    if not isinstance(model, Layer):
        raise TypeError(
            f"create_train_state: expected a funcnn Layer as model, got "
            f"{type(model).__name__}. Build it with funcnn.serial(...) or "
            "funcnn.models."
        )
    check_optimizer("create_train_state", optimizer)
    if grad is not None:
        rules.validate("create_train_state", grad, model=model)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    _, params, model_state = model.init(init_key, tuple(input_shape))
    feedback = None if grad is None else rules.init_feedback(model, params, grad)
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(learned_feedback.trainable(params, feedback)),
        step=jnp.zeros((), jnp.int32),
        key=train_key,
        feedback=feedback,
    )


def _global_norm(tree) -> jax.Array:
    # Written out: optax.global_norm is deprecated and optax.tree.norm is new.
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _value_and_grad(objective, params, *, layer_stats: bool, alignment: bool):
    """`((loss, aux), grads, metrics)` of `objective(params, hook, rule)`.

    Without options this is plain `jax.value_and_grad` and `metrics` is {}. With
    either, zero probes at every leaf layer (`funcnn.nn.probe`) give the deltas:
    - `layer_stats`: "grad_norm/<path>" (L2 norm of the layer's parameter
      gradient, for layers with params) and "delta_rms/<path>" (RMS of
      dL/d(layer output));
    - `alignment`: a second backward pass under the exact rule ("custom") gives
      "align_grad/<path>" and "align_delta/<path>" (`funcnn.alignment`).
    """
    if not (layer_stats or alignment):
        return (*jax.value_and_grad(objective, has_aux=True)(params), {})
    specs = probe.leaf_specs(objective, params)
    res = probe.value_and_grad_with_probes(objective, params, specs, inputs=alignment)
    metrics = {}
    if layer_stats:
        for spec in specs:
            layer_grads = probe.subtree(res.grads, spec.keys)
            if jax.tree_util.tree_leaves(layer_grads):
                metrics[f"grad_norm/{spec.path}"] = _global_norm(layer_grads)
            deltas = jax.tree_util.tree_leaves(res.delta_out[spec.path])
            count = sum(d.size for d in deltas)
            metrics[f"delta_rms/{spec.path}"] = _global_norm(deltas) / np.sqrt(count)
    if alignment:
        exact = probe.value_and_grad_with_probes(
            partial(objective, rule="custom"), params, specs
        )
        metrics.update(alignment_metrics(specs, res, exact))
    return (res.value, res.aux), res.grads, metrics


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] + [True]))


def make_train_step(
    model: Layer,
    optimizer,
    *,
    loss: str | Callable = "cross_entropy",
    grad: Any = "custom",
    label_smoothing: float = 0.0,
    layer_stats: bool = False,
    alignment: bool = False,
    compute_dtype: Any = None,
    jit: bool = True,
    donate: bool = True,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Builds `train_step(state, batch) -> (state, metrics)`.

    Args:
        model: the `Layer` the state was created for.
        optimizer: the optax optimizer the state was created with.
        loss: `"cross_entropy"` (softmax cross-entropy of logits), `"mse"` (the
            squared error of the outputs against one-hot labels), or a callable
            `(outputs (N, K), labels (N,)) -> scalar`.
        grad: the backward rules of the convs, pools and dense layers: a rule
            name ("custom", "autodiff", "feedback_alignment", ...), a rule value,
            or a mapping from layer paths to those (`funcnn.rules`). Each step
            binds it to the state (`rules.bind`): brSF draws the step's B,
            Kolen-Pollack reads and updates the state's `feedback` (make the
            state with `create_train_state(..., grad=grad)`). Or a rule for the
            whole step: `rules.forward_gradient(K)` (or "forward_gradient")
            estimates the gradient from K forward-mode directional derivatives
            and runs no backward pass (`funcnn.training.forward_grad`).
        label_smoothing: eps in [0, 1) for "cross_entropy": the targets become
            `(1 - eps) * one_hot + eps / K`, and the logged loss is that loss.
        layer_stats: also return, per leaf-layer path (e.g. "03_conv"),
            "grad_norm/<path>" (the L2 norm of that layer's parameter gradient,
            for layers with params) and "delta_rms/<path>" (the RMS of the delta
            dL/d(layer output), as `funcnn.backward_trace` computes it). Off by
            default, and then the compiled step is unchanged.
        alignment: also log, per layer with parameters, the angles in degrees
            between `grad`'s backward and the exact one ("align_grad/<path>",
            "align_delta/<path>", see `funcnn.alignment`), and per layer whose
            rule sends its delta through a B of w's shape, the angle between W
            and B ("align_weight/<path>", degrees) and `|B| / |W|`
            ("norm_ratio/<path>"), B as `rules.feedback_weights` gives it for
            this step. Costs a second forward and backward pass per step.
        compute_dtype: None for float32 throughout, or e.g. `jnp.bfloat16` for
            mixed precision (`funcnn.training.precision`): the images and the
            float params are cast to it at the start of the step, the forward and
            backward run in it, and params, optimizer state, BatchNorm statistics,
            the loss and the gradients stay float32.
        jit: if False, return the pure, un-jitted function (to be wrapped by the
            caller, e.g. `jax.jit` with shardings).
        donate: with `jit`, donate the input state's buffers; the caller must
            replace its state with the returned one.

    Returns:
        `train_step(state, (x, y))`; see its contract below. It returns the new
        state and float32 scalar metrics: "loss" and "accuracy" of the batch
        (before the update), "grad_norm" (global L2 norm), "nonfinite" (1.0 if
        the update was skipped), and "lr" (the rate of this update) when the
        optimizer injects one. With `jit`, the call first checks its arguments
        in Python (shapes and dtypes only, no device work) and raises a clear
        error for a batch that is not `(x, y)`, an empty batch, labels of
        another shape or a non-integer dtype, or a state that an earlier
        donating call consumed.
    """
    func = "make_train_step"
    whole_step = rules.step_rule(grad)
    if whole_step is not None and not isinstance(whole_step, rules.ForwardGradient):
        raise TypeError(
            f"{func}: expected a whole-step rule that make_train_step runs "
            f"(forward_gradient), got {whole_step!r}."
        )
    if whole_step is not None and (layer_stats or alignment):
        raise ValueError(
            f"{func}: expected layer_stats=False and alignment=False with "
            f"{whole_step!r}, got layer_stats={layer_stats}, alignment={alignment}. "
            "They measure per-layer deltas of a backward pass, which it never runs."
        )
    if whole_step is None:
        rules.validate(func, grad, model=model)
    # Forward gradients differentiate the forward in forward mode: through the
    # hand-written rules where this JAX runs forward mode through them (the same
    # tangent as the plain forward's), else through the plain forward.
    forward_rule = "custom" if forward_mode_available() else "autodiff"
    check_optimizer(func, optimizer)
    loss_of = loss_fn(loss, label_smoothing)
    dtype = precision.check_compute_dtype(func, compute_dtype)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        """One update: `train_step(state, (x, y)) -> (new state, metrics)`.

        x: images of shape `(N, C, H, W)`, N >= 1. y: int labels of shape
        `(N,)` in `[0, K)`, K the model's output width (also for a callable
        loss: the "accuracy" metric compares them with the argmax). Labels
        outside `[0, K)` are not checked here, since checking values would need
        a device sync every step: out of range, a label makes a NaN step (10
        with K = 10) or trains the wrong class (-1 wraps to class K - 1). The
        loaders (`funcnn.data`) and the training CLI check labels on the host
        before training.
        """
        x, y = batch
        key, step_key = jax.random.split(state.key)
        if whole_step is None:
            rules.check_feedback(
                "train_step", model, state.params, grad, state.feedback
            )
            # brSF draws this step's B; Kolen-Pollack reads B from the state.
            bound = rules.bind(grad, step=state.step, feedback=state.feedback)
        else:
            bound = forward_rule

        def objective(params, hook=None, rule=bound):
            out, model_state = model.apply(
                precision.cast_floating(params, dtype),
                state.model_state,
                precision.cast_floating(x, dtype),
                train=True,
                key=step_key,
                grad=rule,
                hook=hook,
            )
            out = out.astype(jnp.promote_types(out.dtype, jnp.float32))
            return loss_of(out, y), (out, model_state)

        if whole_step is not None:  # forward gradients: no backward pass
            (value, (out, model_state)), grads, _ = forward_value_and_grad(
                objective,
                state.params,
                jax.random.fold_in(step_key, 1),
                whole_step,
            )
            extra = {}
        else:
            (value, (out, model_state)), grads, extra = _value_and_grad(
                objective, state.params, layer_stats=layer_stats, alignment=alignment
            )
        params, feedback, opt_state = learned_feedback.update(optimizer, grads, state)
        ok = jnp.isfinite(value) & _all_finite(grads) & _all_finite(params)
        if feedback is not None:  # the plain step's program stays as it was
            ok = ok & _all_finite(feedback)

        def keep_if_ok(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)

        new_state = TrainState(
            params=keep_if_ok(params, state.params),
            model_state=keep_if_ok(model_state, state.model_state),
            opt_state=keep_if_ok(opt_state, state.opt_state),
            step=state.step + 1,
            key=key,
            feedback=keep_if_ok(feedback, state.feedback),
        )
        if alignment:
            extra.update(weight_metrics(model, state.params, bound))
        metrics = {
            "loss": value.astype(jnp.float32),
            "accuracy": accuracy(out, y).astype(jnp.float32),
            "grad_norm": _global_norm(grads),
            "nonfinite": jnp.logical_not(ok).astype(jnp.float32),
        }
        rate = learning_rate(opt_state)
        if rate is not None:
            metrics["lr"] = jnp.asarray(rate, jnp.float32)
        metrics.update(extra)
        return new_state, metrics

    if not jit:
        return train_step
    jitted = jax.jit(train_step, donate_argnums=0 if donate else ())
    return CheckedStep(jitted, TrainState, train_step.__doc__)


def make_eval_step(
    model: Layer,
    *,
    loss: str | Callable = "cross_entropy",
    grad: Any = "custom",
    compute_dtype: Any = None,
    jit: bool = True,
) -> Callable[[TrainState, Any], dict]:
    """Builds `eval_step(state, batch) -> metrics`, sums that add up over batches.

    Args:
        model: as in `make_train_step`. It runs with `train=False` (BatchNorm
            uses its running statistics, no Dropout).
        loss: as in `make_train_step`.
        grad: as in `make_train_step`; it matters only for rules that change
            the forward (e.g. a straight-through rule's quantized weights). A
            whole-step rule (forward_gradient) evaluates as "custom".
        compute_dtype: as in `make_train_step`.
        jit: as in `make_train_step`.

    Returns:
        `eval_step(state, (x, y))` or `eval_step(state, (x, y, mask))` where x is
        `(N, C, H, W)`, y `(N,)` ints and mask `(N,)` of 0/1 weights (0 marks
        padding). It returns float32 scalars "loss_sum" (the sum of per-example
        losses), "correct" (the number of right argmax predictions) and "count"
        (the number of examples counted), so sums over batches are exact totals.
    """
    if rules.step_rule(grad) is not None:  # it changes no forward
        grad = "custom"
    rules.validate("make_eval_step", grad, model=model)
    loss_of = loss_fn(loss)
    dtype = precision.check_compute_dtype("make_eval_step", compute_dtype)
    # Per-example losses from the library's own mean loss applied row by row.
    per_example = jax.vmap(lambda o, t: loss_of(o[None], t[None]))

    def eval_step(state: TrainState, batch) -> dict:
        x, y = batch[0], batch[1]
        mask = batch[2] if len(batch) > 2 else jnp.ones(y.shape, jnp.float32)
        out, _ = model.apply(
            precision.cast_floating(state.params, dtype),
            state.model_state,
            precision.cast_floating(x, dtype),
            train=False,
            grad=grad,
        )
        out = out.astype(jnp.promote_types(out.dtype, jnp.float32))
        losses = per_example(out, y).astype(jnp.float32)
        hits = (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)
        mask = mask.astype(jnp.float32)
        return {
            # where, not a product: a padding row's loss must not leak a NaN.
            "loss_sum": jnp.sum(jnp.where(mask > 0, losses * mask, 0.0)),
            "correct": jnp.sum(hits * mask),
            "count": jnp.sum(mask),
        }

    return jax.jit(eval_step) if jit else eval_step


def evaluate(eval_step, state: TrainState, x, y, batch_size: int) -> dict[str, float]:
    """Evaluates on every example of `(x, y)` in batches of one fixed shape.

    The last partial batch is padded with zero images under a zero mask, so the
    jitted `eval_step` compiles once per batch shape and no example is dropped.
    Totals are accumulated on the device and fetched once.

    Args:
        eval_step: from `make_eval_step`.
        state: the `TrainState` to evaluate.
        x: images of shape `(N, C, H, W)`; y: int labels of shape `(N,)`.
        batch_size: examples per call, > 0.

    Returns:
        {"loss": mean loss, "accuracy": fraction correct, "correct": int,
        "count": N} as Python numbers.
    """
    x, y = np.asarray(x), np.asarray(y)
    n = x.shape[0]
    if n == 0 or y.shape != (n,) or batch_size < 1:
        raise ValueError(
            f"evaluate: expected N >= 1 images with labels of shape (N,) and "
            f"batch_size >= 1, got x {x.shape}, y {y.shape}, batch_size {batch_size}."
        )
    totals = None
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        mask = np.ones(batch_size, np.float32)
        if len(xb) < batch_size:
            pad = batch_size - len(xb)
            mask[len(xb) :] = 0.0
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        sums = eval_step(state, (xb, yb, mask))
        totals = (
            sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        )
    totals = jax.device_get(totals)
    count = int(round(float(totals["count"])))
    correct = int(round(float(totals["correct"])))
    return {
        "loss": float(totals["loss_sum"]) / count,
        "accuracy": correct / count,
        "correct": correct,
        "count": count,
    }

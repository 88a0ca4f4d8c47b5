"""How far a rule's gradient is from the true one, layer by layer.

For each leaf layer with parameters, two angles in degrees between the rule's
backward pass and the exact one ("custom") on the same batch and forward:
- "grad": between the layer's parameter gradients (all its params as one vector);
- "delta": between the deltas at the layer's input, dLoss/d(input).

The input deltas come from the leaf `hook`: a zero is added to each measured
layer's input and the loss is differentiated with respect to those zeros too
(Flax's "perturb" idea, with no layer edited). 0 degrees means the same
direction, under 90 means the rule's update still descends (Lillicrap et al.).
The angle is `2 * atan2(|u - v|, |u + v|)` of the unit vectors, exact to
rounding near 0 and 180 degrees where arccos of the cosine is not; NaN when
either vector is zero.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnn.rules.layers import _params_at
from funcnn.rules.scope import validate


class LayerAlignment(NamedTuple):
    """Angles in degrees between a rule's backward and the exact one at a layer."""

    grad: float  # parameter gradient vs the exact parameter gradient
    delta: float  # delta at the layer's input vs the exact one


def angle(a: Any, b: Any) -> jax.Array:
    """Degrees between pytrees `a` and `b` of equal structure, as flat vectors."""
    va = jnp.concatenate([jnp.ravel(t) for t in jax.tree_util.tree_leaves(a)])
    vb = jnp.concatenate([jnp.ravel(t) for t in jax.tree_util.tree_leaves(b)])
    na, nb = jnp.linalg.norm(va), jnp.linalg.norm(vb)
    ok = (na > 0) & (nb > 0)
    ua = va / jnp.where(ok, na, 1)
    ub = vb / jnp.where(ok, nb, 1)
    rad = 2 * jnp.arctan2(jnp.linalg.norm(ua - ub), jnp.linalg.norm(ua + ub))
    return jnp.where(ok, jnp.degrees(rad), jnp.nan)


def measured(model, params) -> dict[str, str]:
    """`{metric name: layer path}` of the leaves with parameters, in forward order;
    the name is the path, or the layer's name for a model that is one leaf."""
    from funcnn.nn.core import walk  # imported here: funcnn.nn imports rules

    return {
        path or leaf.name: path
        for path, leaf in walk(model)
        if jax.tree_util.tree_leaves(_params_at(params, path))
    }


def value_and_grad_aligned(
    loss_of: Callable,
    model,
    params,
    model_state,
    x,
    y,
    *,
    grad: Any,
    train: bool,
    key=None,
    exact: Any = "custom",
):
    """`jax.value_and_grad` of `loss_of(model(x), y)` under `grad`, plus angles.

    Runs the forward and backward twice: under `grad` (whose gradients are
    returned) and under `exact`, with the same key, so Dropout masks and
    BatchNorm batch statistics agree.

    Args:
      loss_of: `(outputs, labels) -> scalar`.
      model, params, model_state: the `Layer` and its pytrees.
      x: the input batch, e.g. `(N, C, H, W)`; y: its labels, `(N,)`.
      grad, exact: the rule to measure and the reference rule.
      train, key: as for `model.apply`.

    Returns:
      `((loss, (outputs, new_model_state)), grads, angles)`: as
      `jax.value_and_grad(..., has_aux=True)` gives them, and `angles` mapping
      "align_grad/<path>" and "align_delta/<path>" to degrees (float32 scalars).
    """
    names = measured(model, params)
    paths = set(names.values())
    shapes: dict[str, Any] = {}

    def record(path, layer, call, x):
        name = "/".join(path)
        if name in paths:
            shapes[name] = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x
            )
        return call(x)

    def shape_run(params, model_state, x, key):
        kw = dict(train=train, key=key, grad="custom", hook=record)
        return model.apply(params, model_state, x, **kw)

    jax.eval_shape(shape_run, params, model_state, x, key)
    probes = {
        p: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), s)
        for p, s in shapes.items()
    }

    def objective(params, probes, rule):
        def probe(path, layer, call, x):
            name = "/".join(path)
            if name in probes:
                x = jax.tree_util.tree_map(jnp.add, x, probes[name])
            return call(x)

        kw = dict(train=train, key=key, grad=rule, hook=probe)
        out, new_state = model.apply(params, model_state, x, **kw)
        return loss_of(out, y), (out, new_state)

    (value, aux), (grads, deltas) = jax.value_and_grad(
        partial(objective, rule=grad), (0, 1), has_aux=True
    )(params, probes)
    (exact_grads, exact_deltas), _ = jax.grad(
        partial(objective, rule=exact), (0, 1), has_aux=True
    )(params, probes)
    angles = {}
    for name, path in names.items():
        angles[f"align_grad/{name}"] = angle(
            _params_at(grads, path), _params_at(exact_grads, path)
        ).astype(jnp.float32)
        angles[f"align_delta/{name}"] = angle(deltas[path], exact_deltas[path]).astype(
            jnp.float32
        )
    return (value, aux), grads, angles


def alignment(
    model,
    params,
    state,
    batch,
    *,
    grad: Any,
    loss: str | Callable = "cross_entropy",
    label_smoothing: float = 0.0,
    train: bool = True,
    key=None,
    exact: Any = "custom",
) -> dict[str, LayerAlignment]:
    """Per layer with parameters, the angles between `grad`'s backward and the
    exact one on one batch.

    Args:
      model, params, state: the `Layer`, its params and its model state.
      batch: `(x, y)`: inputs, e.g. `(N, C, H, W)`, and int labels `(N,)`.
      grad: the rule to measure: a name, a value or a mapping (as `model.apply`).
      loss, label_smoothing: as in `make_train_step`.
      train: run the model in training mode (BatchNorm batch statistics,
        Dropout with `key`, by default `PRNGKey(0)`), as a train step does.
      exact: the reference rule.

    Returns:
      `{layer path: LayerAlignment(grad=degrees, delta=degrees)}` in forward
      order. `grad="custom"` against itself gives 0 everywhere.
    """
    from funcnn.training.step import _loss_fn  # imported here: training imports rules

    validate("rules.alignment", grad, model=model)
    validate("rules.alignment", exact, model=model)
    loss_of = _loss_fn(loss, label_smoothing)
    if train and key is None:
        key = jax.random.PRNGKey(0)
    run = jax.jit(
        partial(
            value_and_grad_aligned, loss_of, model, grad=grad, train=train, exact=exact
        )
    )
    _, _, angles = run(params, state, batch[0], batch[1], key=key)
    angles = jax.device_get(angles)
    return {
        name: LayerAlignment(
            float(angles[f"align_grad/{name}"]), float(angles[f"align_delta/{name}"])
        )
        for name in measured(model, params)
    }

"""The forward-gradient estimate of a train step (`funcnn.rules.forward_gradient`):
`g = mean_k (dL . v_k) v_k` from forward-mode passes only, no backward pass.

The directional derivatives come from `jax.jvp` of the loss, all K tangents at
once (`jax.vmap` over the tangents only, so the primal forward runs once). A
custom op's tangent is its plain forward's, so the step runs the model with
`grad="custom"` where this JAX has forward mode through the hand-written rules
(`funcnn.ops.forward_mode_available()`), else with `grad="autodiff"`: the same
numbers either way. A `funcnn.Physical` layer's tangent is its twin's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnn.rules.forward import ForwardGradient


def draw_directions(key: jax.Array, params: Any, directions: int) -> Any:
    """K directions v ~ N(0, I) over all parameters.

    Args:
      key: a PRNG key.
      params: the params tree; each leaf of shape S gets draws of shape (K, *S)
        in its own dtype.
      directions: K.

    Returns:
      A tree like `params` whose leaves have a leading axis of size K.
    """
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    drawn = [
        jax.random.normal(k, (directions,) + jnp.shape(a), jnp.result_type(a))
        for k, a in zip(keys, leaves)
    ]
    return jax.tree_util.tree_unflatten(tree, drawn)


def forward_value_and_grad(
    objective: Callable[[Any], tuple[jax.Array, Any]],
    params: Any,
    key: jax.Array,
    rule: ForwardGradient,
) -> tuple[tuple[jax.Array, Any], Any, jax.Array]:
    """The loss, its aux and the forward-gradient estimate, without a backward pass.

    Args:
      objective: `objective(params) -> (scalar loss, aux)`, differentiable in
        forward mode (the model as the step applies it).
      params: the params tree.
      key: draws the directions (`draw_directions`).
      rule: the `ForwardGradient` (its `directions` K).

    Returns:
      `((loss, aux), g, dots)`: g is a tree like params, `mean_k (dL . v_k) v_k`;
      dots, shape (K,), the directional derivatives `dL . v_k`.
    """
    vs = draw_directions(key, params, rule.directions)

    def along(v):
        return jax.jvp(objective, (params,), (v,), has_aux=True)

    if rule.directions == 1:  # no batching of the tangents: plain convs
        value, dot, aux = along(jax.tree_util.tree_map(lambda v: v[0], vs))
        dots = dot[None]
    else:
        # The primal does not depend on v, so vmap runs it once and broadcasts it.
        values, dots, auxes = jax.vmap(along)(vs)
        value = values[0]
        aux = jax.tree_util.tree_map(lambda a: a[0], auxes)
    k = rule.directions
    grads = jax.tree_util.tree_map(
        lambda v: jnp.tensordot(dots.astype(v.dtype), v, axes=1) / k, vs
    )
    return (value, aux), grads, dots

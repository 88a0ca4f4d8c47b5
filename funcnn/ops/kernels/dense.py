"""Fully connected (dense) layer op with a hand-written backward rule, next to its
plain-lax reference.

For `y = x @ w.T + b` with output deltas g `(N, F_out)`, the rule from the texts:
- the input delta is the deltas sent back through the weights, `g @ w`;
- the weight gradient is the outer product of deltas and inputs, `g.T @ x`;
- the bias gradient is the sum of the deltas over the batch.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp

from funcnn.ops._vjp import custom_vjp


def dense_reference(x, w, b):
    """Plain-lax forward `(N, F_in)` -> `(N, F_out)`: the autodiff path and the
    oracle for the custom rule."""
    y = x @ w.T
    return y if b is None else y + b


@partial(custom_vjp, nondiff_argnums=(3,))
def dense_custom(x, w, b, has_bias):
    return dense_reference(x, w, b)


def _dense_fwd(x, w, b, has_bias):
    # x is needed for dW and w for dX; the bias only contributes its presence.
    return dense_reference(x, w, b), (x, w)


def _dense_bwd(has_bias, res, g):
    """g: output deltas `(N, F_out)`."""
    x, w = res
    dx = dense_input_grad(g, w)
    dw = dense_weight_grad(x, g)
    db = jnp.sum(g, axis=0) if has_bias else None
    return dx, dw, db


def dense_input_grad(g, w):
    """dX `(N, F_in)`: the deltas `g` `(N, F_out)` sent back through the weights
    `w` `(F_out, F_in)`, i.e. `g @ w`."""
    return g @ w


def dense_weight_grad(x, g):
    """dW `(F_out, F_in)`: deltas `g` `(N, F_out)` times inputs `x` `(N, F_in)`,
    summed over the batch, i.e. `g.T @ x`."""
    return g.T @ x


dense_custom.defvjp(_dense_fwd, _dense_bwd)

"""Fully connected (dense) layer op with a hand-written backward rule, next to its
plain-lax reference.

For `y = x @ w.T + b` with output deltas g `(N, F_out)`, the rule from the texts:
- the input delta is the deltas sent back through the weights, `g @ w`;
- the weight gradient is the outer product of deltas and inputs, `g.T @ x`;
- the bias gradient is the sum of the deltas over the batch.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from funcnn.ops import _args


def dense(x, w, b=None, *, grad="custom"):
    """Fully connected map `y = x @ w.T + b`.

    Args:
      x: input of shape `(N, F_in)`.
      w: weights of shape `(F_out, F_in)`: row j holds the weights into output
        unit j, as in the CNN texts and PyTorch's `F.linear`.
      b: bias of shape `(F_out,)`, or None.
      grad: "custom" for the hand-written backward rule, "autodiff" for jax.grad
        of the plain-lax forward, or a backward rule (a name or a value, see
        `funcnn.rules`), e.g. "feedback_alignment".

    Returns:
      Output of shape `(N, F_out)`.

    Raises:
      ValueError, TypeError: on bad shapes, dtypes or arguments, before tracing.
    """
    op = "dense"
    grad = _args.check_grad_mode(op, grad)
    for name, arr, axes in (("x", x, "(N, F_in)"), ("w", w, "(F_out, F_in)")):
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise TypeError(
                f"{op}: expected {name} to be an array, got {type(arr).__name__}."
            )
        if arr.ndim != 2:
            hint = (
                " Flatten it first: x.reshape(x.shape[0], -1)." if name == "x" else ""
            )
            raise ValueError(
                f"{op}: expected {name} of rank 2 {axes}, got shape "
                f"{tuple(arr.shape)}.{hint}"
            )
    _args.check_float(op, "x", x)
    if w.dtype != x.dtype:
        raise TypeError(
            f"{op}: expected w with the dtype of x ({x.dtype}), got {w.dtype}. "
            f"Cast one of them, e.g. w.astype({x.dtype})."
        )
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: expected w of shape (F_out, F_in) with F_in = x.shape[1] = "
            f"{x.shape[1]}, got w of shape {tuple(w.shape)}. Pass w as "
            "(outputs, inputs), i.e. the transpose of x @ w's layout."
        )
    _args.check_bias(op, b, x, w.shape[0], "F_out")
    if grad == "autodiff":
        return dense_reference(x, w, b)
    if not isinstance(grad, str):
        from funcnn.ops import _ruled  # _ruled imports this module

        return _ruled.dense(x, w, b, grad)
    return _dense_custom(x, w, b, b is not None)


def dense_reference(x, w, b):
    """Plain-lax forward `(N, F_in)` -> `(N, F_out)`: the autodiff path and the
    oracle for the custom rule."""
    y = x @ w.T
    return y if b is None else y + b


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dense_custom(x, w, b, has_bias):
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


_dense_custom.defvjp(_dense_fwd, _dense_bwd)

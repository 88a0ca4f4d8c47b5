"""Batch normalisation, with its running statistics as explicit state."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnn import ops
from funcnn.nn.core import Layer, describe, leaf
from funcnn.ops import _args
from funcnn.rules.scope import Scoped, is_mapping, mapping_table, match


def _backward(grad) -> str:
    """The batch_norm backward a BatchNorm layer runs under `grad`: "autodiff"
    where grad comes to "autodiff" at the layer's path, else "custom".

    BatchNorm is not a ruled op: under a rule value it keeps its exact
    (hand-written) backward, and a mapping with no key for its path means
    "custom".
    """
    if is_mapping(grad):
        if not isinstance(grad, Scoped):
            grad = Scoped(mapping_table("grad", grad), ())
        found = match(grad.table, grad.path_str)
        grad = found[1] if found else "custom"
    return "autodiff" if isinstance(grad, str) and grad == "autodiff" else "custom"


class BatchNormState(NamedTuple):
    """A BatchNorm layer's state: its running statistics, per channel.

    Attributes:
        mean: the running mean of shape `(C,)`, float32 (or float64).
        var: the running (unbiased) variance of shape `(C,)`, same dtype.
    """

    mean: jax.Array  # shape=(C,) running mean, float32 (or float64)
    var: jax.Array  # shape=(C,) running (unbiased) variance, same dtype


def BatchNorm(
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    dtype=jnp.float32,
    layout: str = "NCHW",
) -> Layer:
    """Batch normalisation over `(N, C, H, W)` or `(N, C)`, per channel C; with
    layout="NHWC", over `(N, H, W, C)` (and still `(N, C)`).

    In training, normalises with the batch's statistics over N (and H, W) and
    returns the updated running statistics:
    `running = (1 - momentum) * running + momentum * batch` (PyTorch's convention;
    the running variance uses the unbiased batch variance). In evaluation it uses
    the running statistics and leaves them unchanged. Training runs
    `ops.batch_norm`, with its hand-written backward unless `grad` comes to
    "autodiff" at this layer (rule values keep the exact backward).

    The statistics are computed in float32 whatever the input's dtype (bfloat16
    under mixed precision), and the output has the input's dtype.

    Params: `{"scale": (C,), "bias": (C,)}`. State: `BatchNormState(mean, var)`.
    Under a data-parallel `jax.jit` the batch statistics are over the global batch.
    """
    label = "BatchNorm"
    _args.check_layout(label, layout)
    channels_last = layout == "NHWC"
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{label}: expected 0 <= momentum <= 1, got {momentum!r}.")
    if not eps > 0.0:
        raise ValueError(f"{label}: expected eps > 0, got {eps!r}.")

    def init(key, input_shape):
        del key
        if not isinstance(input_shape, tuple) or len(input_shape) not in (2, 4):
            raise ValueError(
                f"{label}: expected an input shape (N, C) or "
                f"{_args.axes_text(layout)}, got {input_shape!r}."
            )
        c = input_shape[-1 if channels_last else 1]
        params = {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)}
        stats = jnp.promote_types(dtype, jnp.float32)
        state = BatchNormState(jnp.zeros((c,), stats), jnp.ones((c,), stats))
        return input_shape, params, state

    def apply(params, state, x, *, train=False, grad="custom", **_):
        if not isinstance(state, BatchNormState):
            raise TypeError(
                f"{label}.apply: expected state to be a BatchNormState(mean, var), "
                f"got {describe(state)}. Pass apply(params, state, x) in that order, "
                "with the state that init returned for this model."
            )
        if x.ndim == 2:
            axes, bshape = (0,), (1, -1)
        elif channels_last:
            axes, bshape = (0, 1, 2), (1, 1, 1, -1)
        else:
            axes, bshape = (0, 2, 3), (1, -1, 1, 1)
        # At least float32 for the statistics, float64 stays float64.
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        scale = params["scale"].astype(x32.dtype)
        bias = params["bias"].astype(x32.dtype)
        if not train:
            inv = jax.lax.rsqrt(state.var + eps) * scale
            y = (x32 - state.mean.reshape(bshape)) * inv.reshape(bshape)
            return (y + bias.reshape(bshape)).astype(x.dtype), state
        y, mean, var = ops.batch_norm(
            x32, scale, bias, eps=eps, layout=layout, grad=_backward(grad)
        )
        count = math.prod(x.shape[a] for a in axes)
        unbiased = var * (count / max(count - 1, 1))
        state = BatchNormState(
            (1 - momentum) * state.mean + momentum * mean,
            (1 - momentum) * state.var + momentum * unbiased,
        )
        return y.astype(x.dtype), state

    return leaf(label, "batchnorm", init, apply, param_keys=("scale", "bias"))

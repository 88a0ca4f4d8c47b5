"""batch_norm: the public op of batch normalisation with the batch's statistics.
It checks its arguments, then runs the hand-written rule
(`funcnn.ops.kernels.batch_norm`) or the plain-jnp reference (grad="autodiff").
"""

from __future__ import annotations

from typing import Any, cast

from funcnn.ops import _args
from funcnn.ops.kernels.batch_norm import (
    NormConfig,
    batch_norm_custom,
    batch_norm_reference,
)

GRADS = ("custom", "autodiff")


def batch_norm(
    x, scale, bias, *, eps=1e-5, layout="NCHW", grad="custom"
) -> tuple[Any, Any, Any]:
    """Normalises x with its batch statistics, per channel: `y = (x - mean) *
    rsqrt(var + eps) * scale + bias`.

    The mean and the biased variance run over every axis but the channel axis.
    `funcnn.BatchNorm` layers call this in training and keep the running
    statistics themselves.

    Args:
      x: input of shape `(N, C, H, W)`, `(N, H, W, C)` with layout="NHWC", or
        `(N, C)` (either layout).
      scale: per-channel scale of shape `(C,)`, in x's dtype.
      bias: per-channel shift of shape `(C,)`, in x's dtype.
      eps: added to the variance, > 0.
      layout: "NCHW" or "NHWC", of a rank-4 x.
      grad: "custom" for the hand-written backward rule, "autodiff" for jax.grad
        of the plain-jnp forward. The forward is the same in both, bit for bit.

    Returns:
      `(y, mean, var)`: y of x's shape, and the batch mean and biased variance of
      shape `(C,)`.

    Raises:
      ValueError, TypeError: on bad shapes, dtypes or arguments, before tracing.
    """
    op = "batch_norm"
    if not (isinstance(grad, str) and grad in GRADS):
        raise ValueError(
            f"{op}: expected grad to be one of {GRADS}, got {grad!r}. No backward "
            "rule value rewrites batch_norm; pass 'custom' for its exact rule."
        )
    x, scale, bias = _args.as_jax(x), _args.as_jax(scale), _args.as_jax(bias)
    layout = _args.check_layout(op, layout)
    if getattr(x, "ndim", None) not in (2, 4):
        raise ValueError(
            f"{op}: expected x of rank 2 (N, C) or 4 {_args.axes_text(layout)}, got "
            f"shape {getattr(x, 'shape', None)}."
        )
    _args.check_float(op, "x", x)
    if x.ndim == 2:
        axes: tuple[int, ...] = (0,)
        channels = x.shape[1]
    else:
        axes = (0, *_args.spatial_axes(layout))
        channels = x.shape[_args.channel_axis(layout)]
    for name, v in (("scale", scale), ("bias", bias)):
        shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
        if shape != (channels,) or dtype != x.dtype:
            raise ValueError(
                f"{op}: expected {name} of shape ({channels},) (one per channel) "
                f"and dtype {x.dtype}, got shape {shape} and dtype {dtype}. Cast "
                f"or reshape it, e.g. {name}.astype(x.dtype)."
            )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: expected eps > 0, got {eps!r}.")
    cfg = NormConfig(axes, float(eps))
    if grad == "autodiff":
        return batch_norm_reference(x, scale, bias, cfg)
    return cast(tuple[Any, Any, Any], batch_norm_custom(x, scale, bias, cfg))

"""max_pool2d: the public op. It checks its arguments, then runs the hand-written
rule (`funcnn.ops.kernels.max_pool`), the plain-lax reference (grad="autodiff")
or a rule value (`funcnn.ops.ruled`).
"""

from __future__ import annotations

from typing import Any, cast

from jax import lax

from funcnn.ops import ruled
from funcnn.ops._args import as_jax
from funcnn.ops._windows import empty_windows, window_config
from funcnn.ops.kernels.max_pool import (
    flat_indices,
    max_pool2d_reference,
    max_pool_argmax,
    max_pool_custom,
    max_pool_indexed_custom,
)
from funcnn.ops.registry import check_grad_mode


def max_pool2d(
    x,
    window,
    *,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
    return_indices=False,
    layout="NCHW",
    grad="custom",
):
    """2-D max pooling.

    Args:
      x: input of shape `(N, C, H, W)`, or `(N, H, W, C)` with layout="NHWC".
      window: int or pair `(KH, KW)`.
      stride: int or pair; None means stride = window.
      padding: int, pair, pair of pairs `((top, bottom), (left, right))`, "SAME" or
        "VALID". Padding is -inf, and each side is at most half the effective window.
        Asymmetric padding and "SAME" go beyond what PyTorch accepts. With dilation,
        a window's taps can still all fall in the padding (they straddle a short
        input): that output is -inf and passes no gradient.
      dilation: int or pair: spacing between window taps.
      ceil_mode: round the output size up, as PyTorch does (a last window that would
        start in the high padding is dropped).
      return_indices: also return where each maximum came from, as PyTorch's flat
        indices `row * W + col` into the unpadded `(H, W)` plane of its (n, c), in
        int32; `max_unpool2d` takes them. Raises if a window lies wholly in the
        padding (it has no input position to point at).
      layout: "NCHW" or "NHWC", of x, the output and the indices.
      grad: "custom" (hand-written rule), "autodiff" (jax.grad of the plain-lax
        forward) or a backward rule (`funcnn.rules`); feedback alignment and sign
        symmetry keep the exact rule here. JAX cannot differentiate a dilated max
        window, so for dilation > 1 the autodiff forward is built from stacked taps
        and a first-argmax gather.

    Returns:
      Output of shape `(N, C, OH, OW)` (or NHWC),
      `OH = floor((H + top + bottom - DH*(KH-1) - 1) / SH) + 1` (ceil with ceil_mode);
      with return_indices, the pair `(output, indices)` of that shape each. On ties
      the first maximum in row-major window order wins, in the value's gradient
      and in the indices.
    """
    op = "max_pool2d"
    x = as_jax(x)
    grad = check_grad_mode(op, grad)
    if not isinstance(return_indices, bool):
        raise TypeError(
            f"{op}: expected return_indices to be a bool, got {return_indices!r}."
        )
    cfg, _ = window_config(op, x, window, stride, padding, dilation, ceil_mode, layout)
    if not return_indices:
        if not isinstance(grad, str):  # a rule value that reroutes the deltas
            return ruled.max_pool2d(x, grad, cfg)
        if grad == "custom":
            return max_pool_custom(x, cfg)
        return max_pool2d_reference(x, cfg)
    empty = empty_windows(cfg)
    if empty:
        raise ValueError(
            f"{op}: expected every window to reach the input with return_indices="
            f"True, got a window along {empty[0]} whose dilated taps all fall in the "
            "padding. Use less padding or dilation."
        )
    if not isinstance(grad, str):
        y = ruled.max_pool2d(x, grad, cfg)
        index = lax.stop_gradient(max_pool_argmax(lax.stop_gradient(x), cfg)[1])
        return y, flat_indices(index, cfg)
    if grad == "custom":
        y, index = cast(tuple[Any, Any], max_pool_indexed_custom(x, cfg))
    else:
        y = max_pool2d_reference(x, cfg)
        index = lax.stop_gradient(max_pool_argmax(lax.stop_gradient(x), cfg)[1])
    return y, flat_indices(index, cfg)

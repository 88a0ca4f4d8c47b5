"""adaptive_avg_pool2d and adaptive_max_pool2d: the public ops. They check their
arguments and build the static windows, then run the hand-written rules
(`funcnn.ops.kernels.adaptive`) or the plain-lax references (grad="autodiff").
"""

from __future__ import annotations

from typing import Any, cast

from jax import lax

from funcnn.ops import _args
from funcnn.ops.kernels.adaptive import (
    AdaptiveConfig,
    AxisWindows,
    adaptive_argmax,
    adaptive_avg_custom,
    adaptive_avg_pool2d_reference,
    adaptive_max_custom,
    adaptive_max_pool2d_reference,
)
from funcnn.ops.registry import check_grad_mode


def _config(op, x, output_size, layout) -> AdaptiveConfig:
    layout = _args.check_layout(op, layout)
    shape = _args.check_rank4(op, "x", x, _args.axes_text(layout))
    _args.check_float(op, "x", x)
    _, _, h, w = _args.nchw_shape(shape, layout)
    if min(h, w) < 1:
        raise ValueError(
            f"{op}: expected x with H and W of at least 1, got shape {shape}."
        )
    out = output_pair(op, output_size, (h, w))
    return AdaptiveConfig(
        AxisWindows.make(h, out[0]), AxisWindows.make(w, out[1]), layout
    )


def output_pair(op: str, output_size, hw) -> tuple[int, int]:
    """`output_size` (int, pair, None in a pair keeps that axis) -> (OH, OW)."""

    def ok(v):
        return v is None or (isinstance(v, int) and not isinstance(v, bool))

    if ok(output_size) and output_size is not None:
        sizes = (output_size, output_size)
    elif (
        isinstance(output_size, (tuple, list))
        and len(output_size) == 2
        and all(ok(v) for v in output_size)
    ):
        sizes = tuple(output_size)
    else:
        raise TypeError(
            f"{op}: expected output_size as an int or a pair (OH, OW) of ints or "
            f"None, got {output_size!r}."
        )
    out = tuple(hw[i] if v is None else v for i, v in enumerate(sizes))
    if min(out) < 1:
        raise ValueError(
            f"{op}: expected output_size >= 1 on each axis, got {output_size!r}. "
            "Use None to keep an axis's size."
        )
    return out[0], out[1]


def adaptive_avg_pool2d(x, output_size, *, layout="NCHW", grad="custom"):
    """Adaptive mean pooling to a fixed output size, as PyTorch's.

    Output `(i, j)` is the mean of input rows `floor(i*H/OH)` to
    `ceil((i+1)*H/OH) - 1` and columns `floor(j*W/OW)` to `ceil((j+1)*W/OW) - 1`.

    Args:
      x: input of shape `(N, C, H, W)`, or `(N, H, W, C)` with layout="NHWC".
      output_size: int or pair `(OH, OW)`; None in the pair keeps that axis's size.
        Sizes above the input's repeat input rows, as in PyTorch.
      layout: "NCHW" or "NHWC", of x and the output.
      grad: "custom" (each delta spread evenly over its window) or "autodiff".

    Returns:
      Output of shape `(N, C, OH, OW)` (or NHWC).
    """
    op = "adaptive_avg_pool2d"
    grad = check_grad_mode(op, grad)
    cfg = _config(op, x, output_size, layout)
    if grad == "custom":
        return adaptive_avg_custom(x, cfg)
    return adaptive_avg_pool2d_reference(x, cfg)


def adaptive_max_pool2d(
    x, output_size, *, return_indices=False, layout="NCHW", grad="custom"
):
    """Adaptive max pooling to a fixed output size, as PyTorch's.

    Windows as in `adaptive_avg_pool2d`. On ties the first maximum in row-major
    window order wins (the gradient goes there, and the index points there).

    Args:
      x: input of shape `(N, C, H, W)`, or `(N, H, W, C)` with layout="NHWC".
      output_size: int or pair `(OH, OW)`; None in the pair keeps that axis's size.
      return_indices: also return PyTorch's flat indices `row * W + col` of each
        maximum in its (n, c) plane, int32 (for `max_unpool2d`).
      layout: "NCHW" or "NHWC", of x, the output and the indices.
      grad: "custom" (each delta to its window's winner) or "autodiff".

    Returns:
      Output of shape `(N, C, OH, OW)` (or NHWC); with return_indices, the pair
      `(output, indices)`.
    """
    op = "adaptive_max_pool2d"
    grad = check_grad_mode(op, grad)
    if not isinstance(return_indices, bool):
        raise TypeError(
            f"{op}: expected return_indices to be a bool, got {return_indices!r}."
        )
    cfg = _config(op, x, output_size, layout)
    if grad == "custom":
        y, index = cast(tuple[Any, Any], adaptive_max_custom(x, cfg))
    else:
        y = adaptive_max_pool2d_reference(x, cfg)
        index = adaptive_argmax(lax.stop_gradient(x), cfg)[1]
    return (y, index) if return_indices else y

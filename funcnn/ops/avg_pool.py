"""avg_pool2d: the public op. It checks its arguments, then runs the hand-written
rule (`funcnn.ops.kernels.avg_pool`), the plain-lax reference (grad="autodiff")
or a rule value (`funcnn.ops.ruled`).
"""

from __future__ import annotations

from funcnn.ops import _args, ruled
from funcnn.ops._windows import window_config
from funcnn.ops.kernels.avg_pool import (
    avg_divisor,
    avg_pool2d_reference,
    avg_pool_custom,
)
from funcnn.ops.registry import check_grad_mode


def avg_pool2d(
    x,
    window,
    *,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    layout="NCHW",
    grad="custom",
):
    """2-D mean pooling.

    Args:
      x: input of shape `(N, C, H, W)`, or `(N, H, W, C)` with layout="NHWC".
      window: int or pair `(KH, KW)`.
      stride: int or pair; None means stride = window.
      padding: int, pair, pair of pairs `((top, bottom), (left, right))`, "SAME" or
        "VALID". Zero padding, each side at most half the window. Asymmetric padding
        and "SAME" go beyond what PyTorch accepts.
      ceil_mode: round the output size up, as PyTorch does.
      count_include_pad: divide by the window's size including explicit padding
        (but never the extra rows ceil_mode adds), else by the number of input
        positions in the window. Applies to "SAME" padding too.
      layout: "NCHW" or "NHWC", of x and the output.
      grad: "custom" (hand-written rule), "autodiff" (jax.grad of the plain-lax
        forward) or a backward rule (`funcnn.rules`); feedback alignment and sign
        symmetry keep the exact rule here.

    Returns:
      Output of shape `(N, C, OH, OW)` (or NHWC),
      `OH = floor((H + top + bottom - KH) / SH) + 1` (ceil with ceil_mode).
    """
    op = "avg_pool2d"
    x = _args.as_jax(x)
    grad = check_grad_mode(op, grad)
    if not isinstance(count_include_pad, bool):
        raise TypeError(
            f"{op}: expected count_include_pad to be a bool, got {count_include_pad!r}."
        )
    cfg, pads = window_config(op, x, window, stride, padding, 1, ceil_mode, layout)
    divisor = avg_divisor(cfg, pads, count_include_pad)
    if not isinstance(grad, str):  # a rule value that reroutes the deltas
        return ruled.avg_pool2d(x, grad, cfg, divisor)
    if grad == "custom":
        return avg_pool_custom(x, cfg, divisor)
    return avg_pool2d_reference(x, cfg, divisor)

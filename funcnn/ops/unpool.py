"""max_unpool2d: the public op. It checks its arguments and sizes the output,
then runs the hand-written rule (`funcnn.ops.kernels.unpool`) or the plain-lax
reference (grad="autodiff").
"""

from __future__ import annotations

import jax.numpy as jnp

from funcnn.ops import _args
from funcnn.ops.kernels.unpool import (
    UnpoolConfig,
    max_unpool2d_reference,
    unpool_custom,
)
from funcnn.ops.registry import check_grad_mode


def max_unpool2d(
    y,
    indices,
    window,
    *,
    stride=None,
    padding=0,
    output_size=None,
    layout="NCHW",
    grad="custom",
):
    """The partial inverse of `max_pool2d`, as `torch.nn.functional.max_unpool2d`.

    `out[n, c].flat[indices[n, c, i, j]] = y[n, c, i, j]`; every other output
    position is zero. With indices from an overlapping pool two values can share a
    position; they are then equal (the same input value), and it is written once.

    Backward rule (grad="custom"): dY is the output delta gathered at the indices,
    `dy[n, c, i, j] = g[n, c].flat[indices[n, c, i, j]]`, as in PyTorch: each value
    that shares a position receives that position's delta. jax.grad of the scatter
    (grad="autodiff") gives it to only one of them; the two agree wherever the
    indices of an (n, c) plane are distinct (any non-overlapping pool).

    Args:
      y: pooled values of shape `(N, C, OH, OW)`, or `(N, OH, OW, C)` with
        layout="NHWC".
      indices: integer array of y's shape: flat positions `row * W + col` in the
        output's `(H, W)` plane, as `max_pool2d(..., return_indices=True)` returns.
        Positions outside the output are dropped (they cannot be checked before
        the values are known).
      window: the max pool's window, to size the output: an int or a pair.
      stride: the max pool's stride, an int or a pair; None means the window.
      padding: the max pool's padding: an int, a pair or a pair of pairs.
      output_size: the output's `(H, W)`, or its whole shape; None gives
        `H = (OH - 1)*SH - top - bottom + KH`, likewise W. Any other size must lie
        strictly within one stride of that (the sizes a pool with this stride maps
        to OH).
      layout: "NCHW" or "NHWC", of y, the indices and the output.
      grad: "custom" (hand-written rule) or "autodiff" (jax.grad of the scatter).

    Returns:
      Output of shape `(N, C, H, W)` (or NHWC).
    """
    op = "max_unpool2d"
    grad = check_grad_mode(op, grad)
    cfg = _config(op, y, indices, window, stride, padding, output_size, layout)
    if grad == "custom":
        return unpool_custom(y, indices, cfg)
    return max_unpool2d_reference(y, indices, cfg)


def _config(op, y, indices, window, stride, padding, output_size, layout):
    layout = _args.check_layout(op, layout)
    ys = _args.check_rank4(op, "y", y, _args.axes_text(layout))
    _args.check_float(op, "y", y)
    if not hasattr(indices, "shape") or not hasattr(indices, "dtype"):
        raise TypeError(
            f"{op}: expected indices to be an array, got {type(indices).__name__}."
        )
    if tuple(indices.shape) != ys:
        raise ValueError(
            f"{op}: expected indices of y's shape {ys}, got {tuple(indices.shape)}. "
            "Pass the indices the max pool returned with these values."
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(
            f"{op}: expected indices with an integer dtype (int32, as max_pool2d "
            f"returns), got {indices.dtype}."
        )
    window_ = _args.pair(op, "window", window)
    stride_ = window_ if stride is None else _args.pair(op, "stride", stride)
    if isinstance(padding, str):
        raise TypeError(
            f"{op}: expected padding as an int, a pair (ph, pw) or a pair of pairs "
            f"((top, bottom), (left, right)), got {padding!r}. Give the max pool's "
            "padding in numbers."
        )
    pads = _args.padding(op, padding, (1, 1), (1, 1), (1, 1))
    _, _, oh, ow = _args.nchw_shape(ys, layout)
    default = tuple(
        (o - 1) * s - sum(p) + k for o, s, p, k in zip((oh, ow), stride_, pads, window_)
    )
    if output_size is None:
        out_hw = default
    else:
        out_hw = _output_size(op, output_size, ys, layout)
        for i, axis in enumerate("HW"):
            lo, hi = default[i] - stride_[i], default[i] + stride_[i]
            if not lo < out_hw[i] < hi:
                raise ValueError(
                    f"{op}: expected output_size along {axis} strictly between "
                    f"{lo} and {hi} (the sizes a stride-{stride_[i]} pool maps to "
                    f"{(oh, ow)[i]}), got {out_hw[i]}. Pass the pooled input's size."
                )
    if min(out_hw) < 1:
        raise ValueError(
            f"{op}: expected a positive output size, got {out_hw} from window "
            f"{window_}, stride {stride_} and padding {pads}."
        )
    return UnpoolConfig((int(out_hw[0]), int(out_hw[1])), layout)


def _output_size(op, output_size, ys, layout) -> tuple[int, int]:
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else None
    if sizes is None or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in sizes
    ):
        raise TypeError(
            f"{op}: expected output_size as a pair (H, W) or a full shape, got "
            f"{output_size!r}."
        )
    if len(sizes) == 4:
        n, c, h, w = _args.nchw_shape(sizes, layout)
        if (n, c) != _args.nchw_shape(ys, layout)[:2]:
            raise ValueError(
                f"{op}: expected output_size with y's batch and channels, got "
                f"{output_size!r} for y of shape {ys}."
            )
        return h, w
    if len(sizes) != 2:
        raise TypeError(
            f"{op}: expected output_size as a pair (H, W) or a full shape, got "
            f"{output_size!r}."
        )
    return sizes[0], sizes[1]

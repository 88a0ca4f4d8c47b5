"""Nearest and bilinear resizing, as PyTorch's `F.interpolate` computes them.

Both are separable: along each spatial axis, every output row reads one input row
(nearest) or blends two (bilinear), with static source rows and weights worked out
in numpy at trace time. No hand-written rule: jax.grad of the gathers and the blend
is the gradient.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from funcnn.ops import _args

MODES = ("nearest", "bilinear")


def upsample2d(
    x,
    *,
    size=None,
    scale_factor=None,
    mode="nearest",
    align_corners=None,
    layout="NCHW",
):
    """Resize the spatial axes, as `torch.nn.functional.interpolate`.

    Args:
      x: input of shape `(N, C, H, W)`, or `(N, H, W, C)` with layout="NHWC".
      size: output `(OH, OW)` (an int for both). Give this or scale_factor.
      scale_factor: positive number or pair; `OH = floor(H * scale)`. The source
        positions then use 1 / scale, as PyTorch does (not OH / H).
      mode: "nearest" (source row `floor(dst * H / OH)`, PyTorch's "nearest") or
        "bilinear".
      align_corners: bilinear only (default False). True maps the corner pixels'
        centres onto each other (`src = dst * (H - 1) / (OH - 1)`); False maps the
        corners' edges (`src = (dst + 0.5) * H / OH - 0.5`, clamped at 0).
      layout: "NCHW" or "NHWC", of x and the output.

    Returns:
      Output of shape `(N, C, OH, OW)` (or NHWC), the dtype of x.
    """
    op = "upsample2d"
    layout = _args.check_layout(op, layout)
    shape = _args.check_rank4(op, "x", x, _args.axes_text(layout))
    _args.check_float(op, "x", x)
    check_options(op, size, scale_factor, mode, align_corners)
    _, _, h, w = _args.nchw_shape(shape, layout)
    out_hw, scales = _output(op, (h, w), size, scale_factor)
    for axis in range(2):
        dim = _args.spatial_axes(layout)[axis]
        size_in, size_out = (h, w)[axis], out_hw[axis]
        if mode == "nearest":
            src = _nearest_rows(size_in, size_out, scales[axis])
            x = jnp.take(x, jnp.asarray(src), axis=dim, mode="clip")
            continue
        lo, hi, frac = _bilinear_rows(size_in, size_out, scales[axis], align_corners)
        wshape = [1, 1, 1, 1]
        wshape[dim] = size_out
        frac = jnp.asarray(frac.reshape(wshape), x.dtype)
        a = jnp.take(x, jnp.asarray(lo), axis=dim, mode="clip")
        b = jnp.take(x, jnp.asarray(hi), axis=dim, mode="clip")
        x = a * (1 - frac) + b * frac
    return x


def check_options(op, size, scale_factor, mode, align_corners) -> None:
    """The checks that need no input: mode, corners, and one size or scale."""
    if mode not in MODES:
        raise ValueError(f"{op}: expected mode to be one of {MODES}, got {mode!r}.")
    if align_corners is not None and mode != "bilinear":
        raise ValueError(
            f"{op}: expected align_corners=None with mode={mode!r}, got "
            f"{align_corners!r}. Only bilinear resizing has corners to align."
        )
    if align_corners is not None and not isinstance(align_corners, bool):
        raise TypeError(
            f"{op}: expected align_corners to be a bool or None, got {align_corners!r}."
        )
    if (size is None) == (scale_factor is None):
        raise ValueError(
            f"{op}: expected exactly one of size and scale_factor, got size={size!r} "
            f"and scale_factor={scale_factor!r}."
        )
    if size is not None:
        _args.pair(op, "size", size)
    else:
        _scales(op, scale_factor)


def _scales(op, scale_factor) -> tuple[float, float]:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0

    if number(scale_factor):
        return float(scale_factor), float(scale_factor)
    if (
        isinstance(scale_factor, (tuple, list))
        and len(scale_factor) == 2
        and all(number(v) for v in scale_factor)
    ):
        return float(scale_factor[0]), float(scale_factor[1])
    raise ValueError(
        f"{op}: expected scale_factor to be a positive number or a pair of them, "
        f"got {scale_factor!r}."
    )


def _output(op, hw, size, scale_factor):
    """((OH, OW), (scale_h, scale_w) or (None, None))."""
    if size is not None:
        return _args.pair(op, "size", size), (None, None)
    scales = _scales(op, scale_factor)
    out = tuple(math.floor(n * s) for n, s in zip(hw, scales))
    if min(out) < 1:
        raise ValueError(
            f"{op}: expected an output of at least 1x1, got {out} from input "
            f"{tuple(hw)} and scale_factor {scale_factor!r}."
        )
    return out, scales


def _nearest_rows(size_in: int, size_out: int, scale) -> np.ndarray:
    """PyTorch's nearest source rows, in its float32 arithmetic."""
    if size_in == size_out:
        return np.arange(size_out)
    step = (
        np.float32(1.0 / scale)
        if scale is not None
        else np.float32(size_in) / np.float32(size_out)
    )
    src = np.floor(np.arange(size_out, dtype=np.float32) * step).astype(np.int64)
    return np.minimum(src, size_in - 1)


def _bilinear_rows(size_in: int, size_out: int, scale, align_corners):
    """(lower rows, upper rows, weight of the upper) along one axis."""
    dst = np.arange(size_out, dtype=np.float64)
    if align_corners:
        step = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        src = dst * step
    else:
        step = 1.0 / scale if scale is not None else size_in / size_out
        src = np.maximum((dst + 0.5) * step - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, src - lo

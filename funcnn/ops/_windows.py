"""Pooling windows: their geometry (`window_config`, from a pool's arguments), the
gathering of a window's taps, and its transpose, built from strided slices, pads
and reshapes.

A pooling window of KH x KW taps is read as KH*KW strided slices of the padded input,
one per tap, each of shape `(N, C, OH, OW)`. The transpose puts each slice back at
its tap's offset and sums them. Both directions are plain, differentiable,
deterministic lax ops: no select_and_scatter, no scatter-add.

The transpose works by stride phase. Padded input row `S*o + D*k` (output row o,
tap k) has phase `r = (D*k) % S` and block row `o + (D*k) // S`, so the taps of one
phase need only whole-row shifts (plain pads) to line up on a grid of blocks; the
S*S phase grids are then interleaved by one stack and reshape. Every output element
sums only the ceil(K/S)**2 taps that can reach it, with no interior padding. For
non-overlapping windows (S == K) each phase holds exactly one tap, and the whole
transpose is a single stack and reshape.

A worked 1-D example: K=3, S=2, D=1. Tap offsets 0, 1, 2 split as 0 = 2*0 + 0,
1 = 2*0 + 1, 2 = 2*1 + 0: phase 0 holds taps 0 and 2 (tap 2 shifted one block
down), phase 1 holds tap 1. With output values a, b, c per tap 0, 1, 2 over two
windows, phase 0 is [a0, a1 + c0, c1] and phase 1 is [b0, b1, 0]; interleaving the
phases gives rows [a0, b0, a1 + c0, b1, c1, 0], the padded input's five rows and
one row past them, which the final crop drops.

Arrays are `(N, C, H, W)` or, with `layout="NHWC"` in the config, `(N, H, W, C)`;
the slices and pads act on whichever axes are spatial, so channels-last data is
never transposed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.ops import _args


class WindowConfig(NamedTuple):
    """Static geometry of one pooling call (all per spatial axis, (H, W) order)."""

    in_hw: _args.Pair  # unpadded input size
    window: _args.Pair
    stride: _args.Pair
    dilation: _args.Pair
    pads: _args.Pads  # low/high padding, ceil_mode's extra already added to high
    out_hw: _args.Pair
    layout: str = "NCHW"

    @property
    def taps(self) -> Iterator[tuple[int, int]]:
        """Tap offsets (kh, kw) in row-major window order."""
        for kh in range(self.window[0]):
            for kw in range(self.window[1]):
                yield kh, kw


def pad_input(x, cfg: WindowConfig, value):
    """x `(N, C, H, W)` -> padded `(N, C, H + top + bottom, W + left + right)`."""
    config = _args.spatial_config(
        cfg.layout, [(lo, hi, 0) for lo, hi in cfg.pads], (0, 0, 0)
    )
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def tap_slice(xp, cfg: WindowConfig, kh: int, kw: int):
    """The values under tap (kh, kw) of every window: `(N, C, OH, OW)`."""
    starts = (kh * cfg.dilation[0], kw * cfg.dilation[1])
    limits = [starts[i] + (cfg.out_hw[i] - 1) * cfg.stride[i] + 1 for i in range(2)]
    full = list(xp.shape)
    for axis, limit in zip(_args.spatial_axes(cfg.layout), limits):
        full[axis] = limit
    return lax.slice(
        xp,
        _args.spatial_config(cfg.layout, starts, 0),
        tuple(full),
        _args.spatial_config(cfg.layout, cfg.stride, 1),
    )


def place_taps(parts: Iterable[tuple[tuple[int, int], Any]], cfg: WindowConfig):
    """Transpose of `tap_slice`, summed over taps, cropped to the unpadded input.

    Args:
      parts: pairs ((kh, kw), values of shape `(N, C, OH, OW)`, or `(N, OH, OW,
        C)` in NHWC); each tap at most once.

    Returns:
      Array of shape `(N, C, H, W)` (or NHWC): each value added at the input
      position its tap read from; positions in the padding are dropped.
    """
    parts = list(parts)
    layout = cfg.layout
    h_axis, w_axis = _args.spatial_axes(layout)
    shape = parts[0][1].shape
    dtype = parts[0][1].dtype
    stride, out_hw = cfg.stride, cfg.out_hw
    # Tap offset D*k = S*q + r: phase r, shift q block rows; span of block rows.
    split = [
        [divmod(k * cfg.dilation[i], stride[i]) for k in range(cfg.window[i])]
        for i in range(2)
    ]
    shifts = [max(q for q, _ in split[i]) for i in range(2)]
    grid = tuple(out_hw[i] + shifts[i] for i in range(2))
    phases: dict[tuple[int, int], Any] = {}
    for (kh, kw), part in parts:
        (qh, rh), (qw, rw) = split[0][kh], split[1][kw]
        if shifts != [0, 0]:
            part = lax.pad(
                part,
                jnp.zeros((), dtype),
                _args.spatial_config(
                    layout,
                    [(qh, shifts[0] - qh, 0), (qw, shifts[1] - qw, 0)],
                    (0, 0, 0),
                ),
            )
        key = (rh, rw)
        phases[key] = part if key not in phases else phases[key] + part
    grid_shape = list(shape)
    grid_shape[h_axis], grid_shape[w_axis] = grid
    zeros = jnp.zeros(grid_shape, dtype)
    # NCHW: (N, C, GH, SH, GW, SW), NHWC: (N, GH, SH, GW, SW, C): block row, phase
    # row, block col, phase col.
    blocks = jnp.stack(
        [
            jnp.stack(
                [phases.get((rh, rw), zeros) for rw in range(stride[1])], w_axis + 1
            )
            for rh in range(stride[0])
        ],
        h_axis + 1,
    )
    grid_shape[h_axis] = grid[0] * stride[0]
    grid_shape[w_axis] = grid[1] * stride[1]
    padded = blocks.reshape(grid_shape)
    # Negative pads crop: the low padding, and whatever lies past the input.
    crops = []
    for i, axis in enumerate((h_axis, w_axis)):
        lo = cfg.pads[i][0]
        crops.append((-lo, cfg.in_hw[i] + lo - padded.shape[axis], 0))
    return lax.pad(
        padded, jnp.zeros((), dtype), _args.spatial_config(layout, crops, (0, 0, 0))
    )


def window_config(op, x, window, stride, padding, dilation, ceil_mode, layout="NCHW"):
    """A pool's arguments, checked, as `(cfg, pads)`: the static `WindowConfig`
    (its pads include the extra high rows ceil_mode adds) and the explicit padding
    alone, `((top, bottom), (left, right))`.

    Raises:
      ValueError, TypeError: naming `op`, for a bad x, window, stride, padding,
        dilation, ceil_mode or layout.
    """
    layout = _args.check_layout(op, layout)
    shape = _args.check_rank4(op, "x", x, _args.axes_text(layout))
    _args.check_float(op, "x", x)
    _, _, h, w = _args.nchw_shape(shape, layout)
    window_ = _args.pair(op, "window", window)
    stride_ = window_ if stride is None else _args.pair(op, "stride", stride)
    dilation_ = _args.pair(op, "dilation", dilation)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: expected ceil_mode to be a bool, got {ceil_mode!r}.")
    eff = _args.effective_window(window_, dilation_)
    pads = _args.padding(op, padding, (h, w), eff, stride_)
    for i, axis in enumerate("HW"):
        # PyTorch's bound (it halves the undilated window): it keeps an undilated
        # window from lying wholly in the padding. A dilated one still can, when
        # its taps straddle a short input; see max_pool2d.
        if max(pads[i]) > eff[i] // 2:
            raise ValueError(
                f"{op}: expected padding along {axis} at most half the effective "
                f"window ({eff[i]} // 2 = {eff[i] // 2}), got {pads[i]}. Use less "
                "padding, or pad x yourself (jnp.pad) for a wider border."
            )
    out, extra = zip(
        *(
            _args.out_size(
                op, (h, w)[i], pads[i], eff[i], stride_[i], ceil_mode, axis="HW"[i]
            )
            for i in range(2)
        )
    )
    full_pads = (
        (pads[0][0], pads[0][1] + extra[0]),
        (pads[1][0], pads[1][1] + extra[1]),
    )
    return WindowConfig(
        (h, w), window_, stride_, dilation_, full_pads, (out[0], out[1]), layout
    ), pads


def window_rows(cfg: WindowConfig, axis: int):
    """Input rows (axis 0) or columns (axis 1) under each tap of each window,
    `(O, K)`, in unpadded coordinates (negative or >= size in the padding)."""
    o = np.arange(cfg.out_hw[axis])[:, None] * cfg.stride[axis]
    k = np.arange(cfg.window[axis])[None, :] * cfg.dilation[axis]
    return o + k - cfg.pads[axis][0]


def empty_windows(cfg: WindowConfig) -> list[str]:
    """The axes ("H", "W") along which some window has no tap on the input."""
    found = []
    for axis, name in enumerate("HW"):
        rows = window_rows(cfg, axis)
        inside = (rows >= 0) & (rows < cfg.in_hw[axis])
        if not inside.any(axis=1).all():
            found.append(name)
    return found

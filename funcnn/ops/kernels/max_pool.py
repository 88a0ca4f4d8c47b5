"""Max pooling's kernels: the plain-lax reference and the hand-written rule.

Max pooling's backward sends each delta to the position that won the forward pass
(the first maximum in row-major window order, as PyTorch does on ties).
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.ops import _args
from funcnn.ops._vjp import custom_vjp
from funcnn.ops._windows import (
    WindowConfig,
    pad_input,
    place_taps,
    tap_slice,
    window_rows,
)


def _index_dtype(cfg: WindowConfig):
    """Smallest signed integer dtype that holds a tap index 0..KH*KW-1."""
    taps = cfg.window[0] * cfg.window[1]
    return jnp.int8 if taps <= 127 else jnp.int16 if taps <= 32767 else jnp.int32


def flat_indices(index, cfg: WindowConfig):
    """Winning tap per window `(N, C, OH, OW)` -> PyTorch's flat input index
    `row * W + col`, int32, same shape (or both NHWC)."""
    h_axis, w_axis = _args.spatial_axes(cfg.layout)
    k = index.astype(jnp.int32)
    rows = lax.broadcasted_iota(jnp.int32, index.shape, h_axis) * cfg.stride[0]
    cols = lax.broadcasted_iota(jnp.int32, index.shape, w_axis) * cfg.stride[1]
    rows = rows + (k // cfg.window[1]) * cfg.dilation[0] - cfg.pads[0][0]
    cols = cols + (k % cfg.window[1]) * cfg.dilation[1] - cfg.pads[1][0]
    return rows * cfg.in_hw[1] + cols


def max_pool2d_reference(x, cfg: WindowConfig):
    """Plain-lax forward, `(N, C, H, W)` -> `(N, C, OH, OW)`: the autodiff oracle."""
    if cfg.dilation == (1, 1):
        return _reduce_max(x, cfg)
    # JAX has no VJP for a dilated reduce_window max; gathering the first maximum
    # from the stacked taps gives the same values and a gradient JAX can derive.
    xp = pad_input(x, cfg, -jnp.inf)
    taps = jnp.stack([tap_slice(xp, cfg, kh, kw) for kh, kw in cfg.taps], axis=-1)
    first = jnp.argmax(taps, axis=-1)[..., None]
    return jnp.take_along_axis(taps, first, axis=-1)[..., 0]


def _reduce_max(x, cfg: WindowConfig):
    """The window maxima by XLA's reduce_window (NaN-propagating), any dilation."""
    # The init value must be a concrete numpy scalar: under jit, jnp.asarray
    # gives a tracer, and lax.reduce_window then falls back to its generic
    # (non-differentiable) form instead of reduce_window_max.
    return lax.reduce_window(
        pad_input(x, cfg, -jnp.inf),
        np.asarray(-np.inf, x.dtype),
        lax.max,
        _args.spatial_config(cfg.layout, cfg.window, 1),
        _args.spatial_config(cfg.layout, cfg.stride, 1),
        "VALID",
        window_dilation=_args.spatial_config(cfg.layout, cfg.dilation, 1),
    )


def max_pool_argmax(x, cfg: WindowConfig):
    """Max and winning tap index (first maximum, row-major), both `(N, C, OH, OW)`.

    One pass over the window's taps: a later tap takes over only when strictly
    greater, so ties keep the first maximum. A NaN always takes over, so a window
    holding NaNs has a NaN maximum whose index is its last NaN, as in PyTorch (NaNs
    propagate forward and their delta goes to the NaN). A tap in the -inf padding
    never takes over from one on the input, even from a -inf input.
    """
    y, index = _scan_taps(x, cfg, with_index=True)
    return _materialised(y, index)


def _scan_taps(x, cfg: WindowConfig, with_index: bool):
    """`(max, index or None)`, both `(N, C, OH, OW)`: see `max_pool_argmax`.

    Built from strided slices, compares and selects, which XLA fuses into one loop
    over the output: on XLA:CPU that is several times faster than reduce_window,
    which it compiles to a loop over each window (0.33 against 1.28 ms for a 2x2/2
    pool of 64x32x32x32; 1.5 against 2.5 ms for 3x3/2). Selects also keep the
    maximum differentiable for any dilation (second order differentiates this).
    """
    xp = pad_input(x, cfg, -jnp.inf)
    dtype = _index_dtype(cfg)
    y = index = None
    seen = None  # static: whether an earlier tap of each window was on the input
    for k, (kh, kw) in enumerate(cfg.taps):
        tap = tap_slice(xp, cfg, kh, kw)
        on_input = _tap_on_input(cfg, k)
        if y is None:
            y, seen = tap, on_input
            index = jnp.zeros(tap.shape, dtype) if with_index else None
            continue
        wins = (tap > y) | (tap != tap)
        if seen is not None:  # the first tap on the input replaces the padding
            wins = wins | ~seen
        if on_input is not None:
            wins = wins & on_input
        if seen is not None:
            seen = None if on_input is None else seen | on_input
        y = jnp.where(wins, tap, y)
        if index is not None:
            index = jnp.where(wins, jnp.asarray(k, dtype), index)
    return y, index


def _tap_on_input(cfg: WindowConfig, k: int):
    """Static numpy mask, broadcastable to `(N, C, OH, OW)`: whether tap k of each
    window lies on the input; None when tap k of every window does."""
    if cfg.pads == ((0, 0), (0, 0)):
        return None
    rows = window_rows(cfg, 0)[:, k // cfg.window[1]]
    cols = window_rows(cfg, 1)[:, k % cfg.window[1]]
    inside = np.outer(
        (rows >= 0) & (rows < cfg.in_hw[0]), (cols >= 0) & (cols < cfg.in_hw[1])
    )
    if inside.all():
        return None
    h_axis, w_axis = _args.spatial_axes(cfg.layout)
    shape = [1, 1, 1, 1]
    shape[h_axis], shape[w_axis] = inside.shape
    return inside.reshape(shape)


def _materialised(y, index):
    """`(y, index)`, unchanged, in a form XLA computes once each.

    Both are cheap selects over the window's taps, and XLA:CPU's fusion copies
    cheap producers into each of their consumers. In one jit of a train step the
    index then reruns the scan inside each of the KH*KW masks of the backward (a
    3x3/2 pool's fwd+bwd ran over twice as long as the two apart), and the
    maximum inside every consumer of the pool's output: the next layer's
    convolution input and, in NCHW, the transposes XLA makes for its weight
    gradient, which then read the pool's input in a cache-hostile order. A
    division by a value XLA cannot prove constant counts as expensive, and an
    expensive producer is not copied: so the index is divided by one (its sign
    bit, always 0, plus 1), and the maximum by one made the same way from the
    index so divided. Taking the maximum's one from the raw index instead let
    XLA fold the index's scan into the maximum's loop, and a forward with
    return_indices=True then ran three scans where it needs two.
    """
    bits = jnp.iinfo(index.dtype).bits
    sign = jnp.asarray(bits - 1, index.dtype)
    index = lax.div(index, 1 + lax.shift_right_logical(index, sign))
    one = 1 + lax.shift_right_logical(index, sign)
    return y / one.astype(y.dtype), index


@partial(custom_vjp, nondiff_argnums=(1,))
def max_pool_custom(x, cfg):
    return _scan_taps(x, cfg, with_index=False)[0]


def _max_pool_fwd(x, cfg):
    # Save only the winning tap per output, as int8 for windows up to 127 taps:
    # a quarter of the output's bytes in float32, instead of a copy of x.
    y, index = max_pool_argmax(x, cfg)
    return y, index


def _max_pool_bwd(cfg, index, g):
    return (max_pool_input_grad(g, index, cfg),)


def max_pool_input_grad(g, index, cfg: WindowConfig):
    """dX `(N, C, H, W)`: each delta of g `(N, C, OH, OW)` sent to its window's
    winner, the tap `index` `(N, C, OH, OW)` names (or all NHWC).

    Where the windows tile the input (`tiles`) this takes the fast path,
    `tiled_input_grad`; everywhere else the general one, `placed_input_grad`.
    """
    if tiles(cfg):
        return tiled_input_grad(g, index, cfg)
    return placed_input_grad(g, index, cfg)


def tiles(cfg: WindowConfig) -> bool:
    """Whether the windows tile the input: stride = window, no dilation and no
    padding (nor the extra row or column ceil_mode can add), so that every input
    position lies in at most one window."""
    return (
        cfg.stride == cfg.window
        and cfg.dilation == (1, 1)
        and cfg.pads == ((0, 0), (0, 0))
    )


def placed_input_grad(g, index, cfg: WindowConfig):
    """`max_pool_input_grad` for any window: per tap, the deltas its windows'
    winners take, put back where the tap read from (`place_taps`)."""
    zero = jnp.zeros((), g.dtype)
    parts = (
        ((kh, kw), jnp.where(index == k, g, zero))
        for k, (kh, kw) in enumerate(cfg.taps)
    )
    return place_taps(parts, cfg)


def tiled_input_grad(g, index, cfg: WindowConfig):
    """`max_pool_input_grad` where the windows tile the input (`tiles`): each
    window's delta broadcast over its KH x KW block, kept at the winning tap, and
    the blocks reshaped into place, in one elementwise pass. (The general path
    stacks KH*KW masked copies instead; this one ran 10-25% faster fwd+bwd on
    128x32x32x32, 2x2/2, on a shared 2-core CPU.)"""
    (oh, ow), (kh, kw) = cfg.out_hw, cfg.window
    h_axis, w_axis = _args.spatial_axes(cfg.layout)
    # Blocks: NCHW (N, C, OH, KH, OW, KW); NHWC (N, OH, KH, OW, KW, C).
    kh_axis, kw_axis = h_axis + 1, w_axis + 2
    blocks = list(g.shape)
    blocks.insert(w_axis + 1, kw)
    blocks.insert(h_axis + 1, kh)
    row = lax.broadcasted_iota(index.dtype, blocks, kh_axis)
    tap = row * jnp.asarray(kw, index.dtype) + lax.broadcasted_iota(
        index.dtype, blocks, kw_axis
    )
    wins = jnp.expand_dims(index, (kh_axis, kw_axis)) == tap
    delta = jnp.expand_dims(g, (kh_axis, kw_axis))
    dx = jnp.where(wins, delta, jnp.zeros((), g.dtype))
    full = list(g.shape)
    full[h_axis], full[w_axis] = oh * kh, ow * kw
    # Rows and columns past the last whole window (floor rounding) get no delta.
    rest = [(0, cfg.in_hw[0] - oh * kh, 0), (0, cfg.in_hw[1] - ow * kw, 0)]
    return lax.pad(
        dx.reshape(full),
        jnp.zeros((), g.dtype),
        _args.spatial_config(cfg.layout, rest, (0, 0, 0)),
    )


max_pool_custom.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(custom_vjp, nondiff_argnums=(1,))
def max_pool_indexed_custom(x, cfg):
    # The forward alone (no VJP) has no backward to keep the scan out of. Where
    # the windows tile the input, skipping `_materialised` is faster (2x2/2 on
    # 64x32x32x32 with indices: 1.18 against 1.36 ms NHWC, 1.32 against 1.53
    # NCHW, benchmarks/pool_versions.py); for overlapping windows it is not
    # (3x3/2 NCHW: 7.9 against 4.5 ms, XLA then reruns the scan per output).
    if tiles(cfg):
        return _scan_taps(x, cfg, with_index=True)
    return max_pool_argmax(x, cfg)


def _max_pool_indexed_fwd(x, cfg):
    # As _max_pool_fwd; the index is also an output (with no gradient of its own).
    y, index = max_pool_argmax(x, cfg)
    return (y, index), index


def _max_pool_indexed_bwd(cfg, index, cotangents):
    g, _ = cotangents  # the integer index output has no cotangent to pass on
    return _max_pool_bwd(cfg, index, g)


max_pool_indexed_custom.defvjp(_max_pool_indexed_fwd, _max_pool_indexed_bwd)

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

    The maxima come from reduce_window; the index is then the first tap equal to
    its window's maximum. Where a window holds a NaN its maximum is NaN and the last
    NaN wins, as in PyTorch (NaNs propagate forward and their delta goes to the
    NaN).
    """
    dilated = cfg.dilation != (1, 1)
    y = _reduce_max(lax.stop_gradient(x) if dilated else x, cfg)
    xp = pad_input(x, cfg, -jnp.inf)
    taps = [tap_slice(xp, cfg, kh, kw) for kh, kw in cfg.taps]
    dtype = _index_dtype(cfg)
    index = jnp.zeros(y.shape, dtype)
    for k in reversed(range(len(taps))):  # the earliest equal tap is written last
        hit = taps[k] == y
        on_input = _tap_on_input(cfg, k)
        if on_input is not None:  # -inf padding never wins over a -inf input
            hit = hit & on_input
        index = jnp.where(hit, jnp.asarray(k, dtype), index)
    for k, tap in enumerate(taps):  # only windows that hold a NaN change here
        index = jnp.where(tap != tap, jnp.asarray(k, dtype), index)
    index = _materialised(index)
    if dilated:
        # JAX cannot differentiate a dilated reduce_window max, and second order
        # differentiates this forward: take the winners' values instead.
        for k, tap in enumerate(taps):
            y = tap if k == 0 else jnp.where(index == k, tap, y)
    return y, index


def _tap_on_input(cfg: WindowConfig, k: int):
    """Static mask, broadcastable to `(N, C, OH, OW)`: whether tap k of each window
    lies on the input; None when no tap of any window touches the padding."""
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
    return jnp.asarray(inside.reshape(shape))


def _materialised(index):
    """`index`, unchanged, in a form XLA computes once.

    When forward and backward compile together (one jit of a train step), XLA:CPU
    fuses the index's computation, a scan over every tap of the window, into each
    of the KH*KW masks of the backward, so each input position redoes the scan
    for every tap that reaches it: a 3x3/2 pool's fwd+bwd ran over twice as long
    as the two apart. XLA's fusion keeps an integer division by a value it cannot
    prove constant out of its consumers (it counts as expensive), so the index is
    written once and read by the masks. The divisor is always 1: the sign bit of
    a non-negative index.
    """
    bits = jnp.iinfo(index.dtype).bits
    one = 1 + lax.shift_right_logical(index, jnp.asarray(bits - 1, index.dtype))
    return lax.div(index, one)


@partial(custom_vjp, nondiff_argnums=(1,))
def max_pool_custom(x, cfg):
    return _reduce_max(x, cfg)


def _max_pool_fwd(x, cfg):
    # Save only the winning tap per output, as int8 for windows up to 127 taps:
    # a quarter of the output's bytes in float32, instead of a copy of x.
    y, index = max_pool_argmax(x, cfg)
    return y, index


def _max_pool_bwd(cfg, index, g):
    return (max_pool_input_grad(g, index, cfg),)


def max_pool_input_grad(g, index, cfg: WindowConfig):
    """dX `(N, C, H, W)`: each delta of g `(N, C, OH, OW)` sent to its window's
    winner, the tap `index` `(N, C, OH, OW)` names."""
    zero = jnp.zeros((), g.dtype)
    parts = (
        ((kh, kw), jnp.where(index == k, g, zero))
        for k, (kh, kw) in enumerate(cfg.taps)
    )
    return place_taps(parts, cfg)


max_pool_custom.defvjp(_max_pool_fwd, _max_pool_bwd)


@partial(custom_vjp, nondiff_argnums=(1,))
def max_pool_indexed_custom(x, cfg):
    return max_pool_argmax(x, cfg)


def _max_pool_indexed_fwd(x, cfg):
    # As _max_pool_fwd; the index is also an output (with no gradient of its own).
    y, index = max_pool_argmax(x, cfg)
    return (y, index), index


def _max_pool_indexed_bwd(cfg, index, cotangents):
    g, _ = cotangents  # the integer index output has no cotangent to pass on
    return _max_pool_bwd(cfg, index, g)


max_pool_indexed_custom.defvjp(_max_pool_indexed_fwd, _max_pool_indexed_bwd)

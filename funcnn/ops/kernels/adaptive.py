"""Adaptive average and max pooling, with hand-written backward rules next to their
plain-lax references.

An adaptive pool picks its windows from the output size, as PyTorch does: output
row i pools input rows `floor(i*H/OH)` to `ceil((i+1)*H/OH) - 1`, and likewise for
columns. Windows differ in size by at most one and may overlap by a row, so the
rules work one axis at a time from static numpy tables:

- forward, along each axis, the K = max window length taps of every window are
  gathered (a short window repeats its last row, which never changes a max and is
  masked out of a mean);
- backward, each input row looks up the few windows that contain it (the inverse
  table) and gathers their deltas. No scatter, so the sums run in a fixed order.

The mean's backward spreads each delta evenly over its window; the max's sends it
to the window's winner: the first maximum in row-major window order (the last NaN
where the window holds one, as in PyTorch).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.ops import _args
from funcnn.ops._vjp import custom_vjp


class AxisWindows(NamedTuple):
    """Static windows of one spatial axis: input length, and window bounds."""

    size: int
    starts: tuple[int, ...]  # floor(i * size / out)
    ends: tuple[int, ...]  # ceil((i + 1) * size / out), exclusive

    @classmethod
    def make(cls, size: int, out: int) -> AxisWindows:
        i = np.arange(out)
        return cls(
            size,
            tuple(int(s) for s in (i * size) // out),
            tuple(int(e) for e in -(-((i + 1) * size) // out)),
        )

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray(self.ends) - np.asarray(self.starts)

    def taps(self) -> np.ndarray:
        """`(out, K)` input rows under each window's taps, a short window's last
        row repeated."""
        k = np.arange(int(self.lengths.max()))
        rows = np.asarray(self.starts)[:, None] + k[None, :]
        return np.minimum(rows, np.asarray(self.ends)[:, None] - 1)

    def inverse(self) -> tuple[np.ndarray, np.ndarray]:
        """`(size, M)` windows that contain each input row, and which are real
        (a row in fewer than M windows pads with window 0, marked False)."""
        holders = [
            [i for i, (s, e) in enumerate(zip(self.starts, self.ends)) if s <= r < e]
            for r in range(self.size)
        ]
        m = max(len(h) for h in holders)
        table = np.zeros((self.size, m), np.int32)
        valid = np.zeros((self.size, m), bool)
        for r, h in enumerate(holders):
            table[r, : len(h)] = h
            valid[r, : len(h)] = True
        return table, valid


class AdaptiveConfig(NamedTuple):
    """Static geometry of one adaptive pooling call."""

    h: AxisWindows
    w: AxisWindows
    layout: str

    @property
    def out_hw(self) -> tuple[int, int]:
        return len(self.h.starts), len(self.w.starts)


def _take(x, rows, layout: str, axis: int):
    """x gathered at the static `rows` along spatial axis 0 (H) or 1 (W).

    Evenly spaced rows (every window of one size: H a multiple of OH, or global
    pooling) are a strided slice; others a gather.
    """
    dim = _args.spatial_axes(layout)[axis]
    rows = np.asarray(rows)
    steps = np.diff(rows)
    if rows.size == 1 or (steps[0] > 0 and (steps == steps[0]).all()):
        step = int(steps[0]) if rows.size > 1 else 1
        return lax.slice_in_dim(x, int(rows[0]), int(rows[-1]) + 1, step, axis=dim)
    return jnp.take(x, jnp.asarray(rows, jnp.int32), axis=dim, mode="clip")


def _along(values: np.ndarray, layout: str, axis: int, rank: int = 4):
    """A static 1-D array shaped to broadcast along spatial axis 0 or 1."""
    shape = [1] * rank
    shape[_args.spatial_axes(layout)[axis]] = values.shape[0]
    return jnp.asarray(values.reshape(shape))


def _spread(g, cfg: AdaptiveConfig, axis: int, weights: np.ndarray):
    """Transpose of the windows along `axis`: input row r gets the sum over the
    windows i that contain it of `weights[i] * g[i]`, by the inverse table."""
    win = cfg.h if axis == 0 else cfg.w
    table, valid = win.inverse()
    total = None
    for m in range(table.shape[1]):
        part = _take(g, table[:, m], cfg.layout, axis)
        part = part * _along(weights[table[:, m]], cfg.layout, axis).astype(g.dtype)
        if not valid[:, m].all():  # where, not a zero weight: inf * 0 is NaN
            part = jnp.where(_along(valid[:, m], cfg.layout, axis), part, 0)
        total = part if total is None else total + part
    return total


def adaptive_avg_pool2d_reference(x, cfg: AdaptiveConfig):
    """Plain-lax forward: per axis, one slice and mean per window, concatenated."""
    for axis, win in enumerate((cfg.h, cfg.w)):
        dim = _args.spatial_axes(cfg.layout)[axis]
        x = jnp.concatenate(
            [
                jnp.mean(lax.slice_in_dim(x, s, e, axis=dim), axis=dim, keepdims=True)
                for s, e in zip(win.starts, win.ends)
            ],
            axis=dim,
        )
    return x


@partial(custom_vjp, nondiff_argnums=(1,))
def adaptive_avg_custom(x, cfg):
    return adaptive_avg_pool2d_reference(x, cfg)


def _adaptive_avg_fwd(x, cfg):
    # The backward needs only the static windows: nothing is saved.
    return adaptive_avg_pool2d_reference(x, cfg), None


def _adaptive_avg_bwd(cfg, res, g):
    """g `(N, C, OH, OW)` -> dx `(N, C, H, W)`: each delta / window size to every
    position of its window, one axis at a time."""
    del res
    g = _spread(g, cfg, 1, 1.0 / cfg.w.lengths)
    return (_spread(g, cfg, 0, 1.0 / cfg.h.lengths),)


adaptive_avg_custom.defvjp(_adaptive_avg_fwd, _adaptive_avg_bwd)


def adaptive_max_pool2d_reference(x, cfg: AdaptiveConfig):
    """Plain-lax forward: every window's taps gathered into one axis, then the
    first maximum picked with argmax and gathered (so autodiff sends the delta to
    it; jnp.max would split it among ties)."""
    if cfg.layout == "NHWC":
        x = jnp.transpose(x, (0, 3, 1, 2))
    n, c, h, w = x.shape
    (oh, ow), rows, cols = cfg.out_hw, cfg.h.taps(), cfg.w.taps()
    kh, kw = rows.shape[1], cols.shape[1]
    x = jnp.take(x, jnp.asarray(rows.reshape(-1)), axis=2, mode="clip")
    x = x.reshape(n, c, oh, kh, w)
    x = jnp.take(x, jnp.asarray(cols.reshape(-1)), axis=4, mode="clip")
    taps = x.reshape(n, c, oh, kh, ow, kw).transpose(0, 1, 2, 4, 3, 5)
    taps = taps.reshape(n, c, oh, ow, kh * kw)
    first = jnp.argmax(taps, axis=-1)[..., None]
    y = jnp.take_along_axis(taps, first, axis=-1)[..., 0]
    return jnp.transpose(y, (0, 2, 3, 1)) if cfg.layout == "NHWC" else y


def adaptive_argmax(x, cfg: AdaptiveConfig):
    """Max and flat winner index `row * W + col`, both `(N, C, OH, OW)`.

    Separable: the first maximum of each row's window columns, then the first row
    whose maximum is the window's. That is the first maximum in row-major window
    order (and, with NaNs, the last NaN), in K_H + K_W gathers instead of K_H*K_W.
    """
    col_taps, row_taps = cfg.w.taps().T, cfg.h.taps().T
    best = _take(x, col_taps[0], cfg.layout, 1)
    col = jnp.broadcast_to(
        _along(col_taps[0].astype(np.int32), cfg.layout, 1), best.shape
    )
    for cols in col_taps[1:]:
        v = _take(x, cols, cfg.layout, 1)
        wins = (v > best) | (v != v)
        at = _along(cols.astype(np.int32), cfg.layout, 1)
        best, col = jnp.where(wins, v, best), jnp.where(wins, at, col)

    def row_tap(rows):
        flat = _along(rows.astype(np.int32) * cfg.w.size, cfg.layout, 0)
        return _take(best, rows, cfg.layout, 0), flat + _take(col, rows, cfg.layout, 0)

    y, index = row_tap(row_taps[0])
    for rows in row_taps[1:]:
        v, flat = row_tap(rows)
        wins = (v > y) | (v != v)
        y, index = jnp.where(wins, v, y), jnp.where(wins, flat, index)
    return y, index


@partial(custom_vjp, nondiff_argnums=(1,))
def adaptive_max_custom(x, cfg):
    return adaptive_argmax(x, cfg)


def _adaptive_max_fwd(x, cfg):
    # Save only the winners' flat indices (the op's int32 index output).
    y, index = adaptive_argmax(x, cfg)
    return (y, index), index


def _adaptive_max_bwd(cfg, index, cotangents):
    """g `(N, C, OH, OW)` -> dx `(N, C, H, W)`: each input position gathers the
    deltas of the windows that contain it and that it won."""
    g, _ = cotangents  # the integer index output has no cotangent
    (table_h, valid_h), (table_w, valid_w) = cfg.h.inverse(), cfg.w.inverse()
    pos = _along(np.arange(cfg.h.size, dtype=np.int32) * cfg.w.size, cfg.layout, 0)
    pos = pos + _along(np.arange(cfg.w.size, dtype=np.int32), cfg.layout, 1)
    zero = jnp.zeros((), g.dtype)
    dx = None
    for m1 in range(table_h.shape[1]):
        g_h = _take(g, table_h[:, m1], cfg.layout, 0)
        i_h = _take(index, table_h[:, m1], cfg.layout, 0)
        for m2 in range(table_w.shape[1]):
            won = _take(i_h, table_w[:, m2], cfg.layout, 1) == pos
            real = np.outer(valid_h[:, m1], valid_w[:, m2])
            if not real.all():
                won = won & _along2(real, cfg.layout)
            part = jnp.where(won, _take(g_h, table_w[:, m2], cfg.layout, 1), zero)
            dx = part if dx is None else dx + part
    return (dx,)


def _along2(values: np.ndarray, layout: str):
    """A static `(H, W)` array shaped to broadcast over a rank-4 array."""
    h_axis, w_axis = _args.spatial_axes(layout)
    shape = [1, 1, 1, 1]
    shape[h_axis], shape[w_axis] = values.shape
    return jnp.asarray(values.reshape(shape))


adaptive_max_custom.defvjp(_adaptive_max_fwd, _adaptive_max_bwd)

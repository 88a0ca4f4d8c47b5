"""Max unpooling (PyTorch's `max_unpool2d`), with a hand-written backward rule next
to its plain-lax reference.

Unpooling writes each pooled value back at the input position its max pool took it
from (the pool's flat indices) and zeros elsewhere. Its backward is a gather: each
pooled value's delta is the output delta at its index. That is the max pool's own
backward read the other way round: the pool sends deltas to the winners, the
unpool collects them from there.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp

from funcnn.ops._vjp import custom_vjp


class UnpoolConfig(NamedTuple):
    """Static shape of one max_unpool2d call: the output's (H, W) and the layout."""

    out_hw: tuple[int, int]
    layout: str


def _flat(a, layout: str):
    """`(N, C, H, W)` -> `(N, C, H*W)`, or `(N, H, W, C)` -> `(N, H*W, C)`."""
    if layout == "NCHW":
        return a.reshape(a.shape[0], a.shape[1], -1)
    return a.reshape(a.shape[0], -1, a.shape[3])


def _unflat(a, cfg: UnpoolConfig):
    n = a.shape[0]
    if cfg.layout == "NCHW":
        return a.reshape(n, a.shape[1], *cfg.out_hw)
    return a.reshape(n, *cfg.out_hw, a.shape[2])


def _scatter_index(indices, cfg: UnpoolConfig):
    """Index arrays for `.at[]` on the flattened output: batch, channel, position.

    A position outside the output becomes H*W (past the end, so a scatter with
    mode="drop" skips it), never a negative index that would count from the end.
    """
    layout = cfg.layout
    size = cfg.out_hw[0] * cfg.out_hw[1]
    flat = _flat(indices, layout)
    flat = jnp.where((flat >= 0) & (flat < size), flat, size)
    n, c = flat.shape[0], flat.shape[1 if layout == "NCHW" else 2]
    batch = jnp.arange(n)[:, None, None]
    chan = jnp.arange(c)[None, :, None] if layout == "NCHW" else jnp.arange(c)
    if layout == "NCHW":
        return batch, chan, flat
    return batch, flat, chan[None, None, :]


def max_unpool2d_reference(y, indices, cfg: UnpoolConfig):
    """Plain-lax forward: one scatter of y into zeros (indices outside dropped)."""
    n = y.shape[0]
    c = y.shape[1 if cfg.layout == "NCHW" else 3]
    size = cfg.out_hw[0] * cfg.out_hw[1]
    shape = (n, c, size) if cfg.layout == "NCHW" else (n, size, c)
    out = jnp.zeros(shape, y.dtype)
    out = out.at[_scatter_index(indices, cfg)].set(_flat(y, cfg.layout), mode="drop")
    return _unflat(out, cfg)


@partial(custom_vjp, nondiff_argnums=(2,))
def unpool_custom(y, indices, cfg):
    return max_unpool2d_reference(y, indices, cfg)


def _unpool_fwd(y, indices, cfg):
    # The backward gathers at the indices; y itself is not needed.
    return max_unpool2d_reference(y, indices, cfg), indices


def _unpool_bwd(cfg, indices, g):
    """g `(N, C, H, W)` -> (dy `(N, C, OH, OW)`, no cotangent for the indices)."""
    # An index outside the output wrote nothing, so it reads no delta (0).
    where = _scatter_index(indices, cfg)
    taken = _flat(g, cfg.layout).at[where].get(mode="fill", fill_value=0)
    return taken.reshape(indices.shape), None


unpool_custom.defvjp(_unpool_fwd, _unpool_bwd)

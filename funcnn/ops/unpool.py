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

import jax
import jax.numpy as jnp

from funcnn.ops import _args


class UnpoolConfig(NamedTuple):
    """Static shape of one max_unpool2d call: the output's (H, W) and the layout."""

    out_hw: tuple[int, int]
    layout: str


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
      window, stride, padding: those of the max pool, to size the output: int or
        pair (stride None means the window); padding an int, pair or pair of pairs.
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
    grad = _args.check_grad_mode(op, grad)
    cfg = _config(op, y, indices, window, stride, padding, output_size, layout)
    if grad == "custom":
        return _unpool_custom(y, indices, cfg)
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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _unpool_custom(y, indices, cfg):
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


_unpool_custom.defvjp(_unpool_fwd, _unpool_bwd)

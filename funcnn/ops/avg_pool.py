"""Mean pooling with a hand-written backward rule, next to its plain-lax reference.

Mean pooling's backward spreads each delta evenly over its window: each output's
delta, divided by its window's count, goes to every tap of the window.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.ops import _args
from funcnn.ops._windows import WindowConfig, pad_input, place_taps
from funcnn.ops.pool import _window_config


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
    grad = _args.check_grad_mode(op, grad)
    if not isinstance(count_include_pad, bool):
        raise TypeError(
            f"{op}: expected count_include_pad to be a bool, got {count_include_pad!r}."
        )
    cfg, pads = _window_config(op, x, window, stride, padding, 1, ceil_mode, layout)
    divisor = _avg_divisor(cfg, pads, count_include_pad)
    if not isinstance(grad, str):  # a rule value that reroutes the deltas
        from funcnn.ops import _ruled  # _ruled imports this module

        return _ruled.avg_pool2d(x, grad, cfg, divisor)
    if grad == "custom":
        return _avg_pool_custom(x, cfg, divisor)
    return avg_pool2d_reference(x, cfg, divisor)


class _Divisor:
    """Hashable wrapper of the static `(OH, OW)` divisor, for nondiff_argnums."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self._key = (array.shape, array.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Divisor) and self._key == other._key


def _avg_divisor(cfg: WindowConfig, pads, count_include_pad: bool) -> _Divisor:
    """Per-output window counts, `(OH, OW)` (`(OH, OW, 1)` in NHWC), computed in
    numpy at trace time."""
    counts = []
    for i in range(2):
        lo, hi = pads[i]  # explicit padding, without ceil_mode's extra
        start = np.arange(cfg.out_hw[i]) * cfg.stride[i]
        end = start + cfg.window[i]
        if count_include_pad:
            first, last = 0, lo + cfg.in_hw[i] + hi
        else:
            first, last = lo, lo + cfg.in_hw[i]
        counts.append(np.minimum(end, last) - np.maximum(start, first))
    counts = np.outer(counts[0], counts[1])
    return _Divisor(counts if cfg.layout == "NCHW" else counts[:, :, None])


def avg_pool2d_reference(x, cfg: WindowConfig, divisor: _Divisor):
    """Plain-lax forward, `(N, C, H, W)` -> `(N, C, OH, OW)`: the autodiff oracle."""
    sums = lax.reduce_window(
        pad_input(x, cfg, 0),
        np.asarray(0, x.dtype),  # concrete, so JAX sees reduce_window_sum
        lax.add,
        _args.spatial_config(cfg.layout, cfg.window, 1),
        _args.spatial_config(cfg.layout, cfg.stride, 1),
        "VALID",
    )
    return sums / jnp.asarray(divisor.array, x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool_custom(x, cfg, divisor):
    return avg_pool2d_reference(x, cfg, divisor)


def _avg_pool_fwd(x, cfg, divisor):
    # The backward needs only the static geometry and divisor: nothing is saved.
    return avg_pool2d_reference(x, cfg, divisor), None


def _avg_pool_bwd(cfg, divisor, res, g):
    """g: `(N, C, OH, OW)` -> dx `(N, C, H, W)`: each delta / count to every tap."""
    del res
    share = g / jnp.asarray(divisor.array, g.dtype)
    return (place_taps(((tap, share) for tap in cfg.taps), cfg),)


_avg_pool_custom.defvjp(_avg_pool_fwd, _avg_pool_bwd)

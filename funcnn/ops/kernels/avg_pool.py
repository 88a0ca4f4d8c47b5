"""Mean pooling with a hand-written backward rule, next to its plain-lax reference.

Mean pooling's backward spreads each delta evenly over its window: each output's
delta, divided by its window's count, goes to every tap of the window.
"""

from __future__ import annotations

from functools import partial

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.ops import _args
from funcnn.ops._vjp import custom_vjp
from funcnn.ops._windows import WindowConfig, pad_input, place_taps


class Divisor:
    """Hashable wrapper of the static `(OH, OW)` divisor, for nondiff_argnums."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self._key = (array.shape, array.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, Divisor) and self._key == other._key


def avg_divisor(cfg: WindowConfig, pads, count_include_pad: bool) -> Divisor:
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
    return Divisor(counts if cfg.layout == "NCHW" else counts[:, :, None])


def avg_pool2d_reference(x, cfg: WindowConfig, divisor: Divisor):
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


@partial(custom_vjp, nondiff_argnums=(1, 2))
def avg_pool_custom(x, cfg, divisor):
    return avg_pool2d_reference(x, cfg, divisor)


def _avg_pool_fwd(x, cfg, divisor):
    # The backward needs only the static geometry and divisor: nothing is saved.
    return avg_pool2d_reference(x, cfg, divisor), None


def _avg_pool_bwd(cfg, divisor, res, g):
    del res  # nothing was saved
    return (avg_pool_input_grad(g, cfg, divisor),)


def avg_pool_input_grad(g, cfg: WindowConfig, divisor: Divisor):
    """dX `(N, C, H, W)`: each delta of g `(N, C, OH, OW)` divided by its window's
    count, to every tap of the window."""
    share = g / jnp.asarray(divisor.array, g.dtype)
    return place_taps(((tap, share) for tap in cfg.taps), cfg)


avg_pool_custom.defvjp(_avg_pool_fwd, _avg_pool_bwd)

"""Window gathering and its transpose, built from strided slices and pads.

A pooling window of KH x KW taps is read as KH*KW strided slices of the padded input,
one per tap, each of shape `(N, C, OH, OW)`. The transpose places each slice back at
its tap's offset with an interior-padded `lax.pad` and sums them. Both directions are
plain, differentiable, deterministic lax ops: no select_and_scatter, no scatter-add.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import jax.numpy as jnp
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

    @property
    def taps(self) -> Iterator[tuple[int, int]]:
        """Tap offsets (kh, kw) in row-major window order."""
        for kh in range(self.window[0]):
            for kw in range(self.window[1]):
                yield kh, kw


def pad_input(x, cfg: WindowConfig, value):
    """x `(N, C, H, W)` -> padded `(N, C, H + top + bottom, W + left + right)`."""
    return lax.pad(
        x,
        jnp.asarray(value, x.dtype),
        ((0, 0, 0), (0, 0, 0)) + tuple((lo, hi, 0) for lo, hi in cfg.pads),
    )


def tap_slice(xp, cfg: WindowConfig, kh: int, kw: int):
    """The values under tap (kh, kw) of every window: `(N, C, OH, OW)`."""
    starts = (kh * cfg.dilation[0], kw * cfg.dilation[1])
    limits = tuple(
        starts[i] + (cfg.out_hw[i] - 1) * cfg.stride[i] + 1 for i in range(2)
    )
    return lax.slice(
        xp, (0, 0) + starts, xp.shape[:2] + limits, (1, 1) + tuple(cfg.stride)
    )


def place_taps(parts: Iterable[tuple[tuple[int, int], object]], cfg: WindowConfig):
    """Transpose of `tap_slice`, summed over taps, cropped to the unpadded input.

    Args:
      parts: pairs ((kh, kw), values of shape `(N, C, OH, OW)`).

    Returns:
      Array of shape `(N, C, H, W)`: each value added at the input position its tap
      read from; positions in the padding are dropped.
    """
    total = None
    for (kh, kw), part in parts:
        taps = (kh, kw)
        config = [(0, 0, 0), (0, 0, 0)]
        for i in range(2):
            # Low pad puts the tap at its offset (minus the crop of the padding);
            # interior pad spaces values by the stride; high pad fills to the size.
            lo = taps[i] * cfg.dilation[i] - cfg.pads[i][0]
            span = (cfg.out_hw[i] - 1) * cfg.stride[i] + 1
            hi = cfg.in_hw[i] - lo - span
            config.append((lo, hi, cfg.stride[i] - 1))
        placed = lax.pad(part, jnp.zeros((), part.dtype), tuple(config))
        total = placed if total is None else total + placed
    return total

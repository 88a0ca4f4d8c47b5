"""Window gathering and its transpose, built from strided slices, pads and reshapes.

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
      parts: pairs ((kh, kw), values of shape `(N, C, OH, OW)`); each tap at most
        once.

    Returns:
      Array of shape `(N, C, H, W)`: each value added at the input position its tap
      read from; positions in the padding are dropped.
    """
    parts = list(parts)
    lead = parts[0][1].shape[:2]
    dtype = parts[0][1].dtype
    stride, out_hw = cfg.stride, cfg.out_hw
    # Tap offset D*k = S*q + r: phase r, shift q block rows; span of block rows.
    split = [
        [divmod(k * cfg.dilation[i], stride[i]) for k in range(cfg.window[i])]
        for i in range(2)
    ]
    shifts = [max(q for q, _ in split[i]) for i in range(2)]
    grid = tuple(out_hw[i] + shifts[i] for i in range(2))
    phases: dict[tuple[int, int], object] = {}
    for (kh, kw), part in parts:
        (qh, rh), (qw, rw) = split[0][kh], split[1][kw]
        if shifts != [0, 0]:
            part = lax.pad(
                part,
                jnp.zeros((), dtype),
                (
                    (0, 0, 0),
                    (0, 0, 0),
                    (qh, shifts[0] - qh, 0),
                    (qw, shifts[1] - qw, 0),
                ),
            )
        key = (rh, rw)
        phases[key] = part if key not in phases else phases[key] + part
    zeros = jnp.zeros(lead + grid, dtype)
    # (N, C, GH, SH, GW, SW): block row, phase row, block col, phase col.
    blocks = jnp.stack(
        [
            jnp.stack([phases.get((rh, rw), zeros) for rw in range(stride[1])], -1)
            for rh in range(stride[0])
        ],
        3,
    )
    padded = blocks.reshape(lead + (grid[0] * stride[0], grid[1] * stride[1]))
    # Negative pads crop: the low padding, and whatever lies past the input.
    config = [(0, 0, 0), (0, 0, 0)]
    for i in range(2):
        lo = cfg.pads[i][0]
        config.append((-lo, cfg.in_hw[i] + lo - padded.shape[2 + i], 0))
    return lax.pad(padded, jnp.zeros((), dtype), tuple(config))

"""Two user rules, written as a user would, kept here as tested examples.

- `QuantizedConv`: a straight-through rule. The forward runs the conv with its
  weights rounded to a grid (the imperfect physical system), the backward is the
  exact rule of the ideal conv with the unrounded weights: the shape of
  physics-aware training.
- `SplitTies`: a max-pool rule that shares each delta evenly among the tied
  maxima of its window, where the exact rule gives it all to the first one.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from funcnn.ops import conv2d_reference
from funcnn.ops.rule import Rule


@dataclasses.dataclass(frozen=True)
class QuantizedConv(Rule):
    """conv2d's forward with w rounded to multiples of `step`; the backward is
    the exact rule of the conv with the unrounded w (dX through w, dW exact)."""

    step: float = 0.05
    ops = ("conv2d",)

    def conv2d_forward(self, x, w, b, cfg):
        w_q = jnp.round(w / self.step) * self.step
        return conv2d_reference(x, w_q, b, cfg)


@dataclasses.dataclass(frozen=True)
class SplitTies(Rule):
    """max_pool2d's delta shared evenly among the tied maxima of each window."""

    ops = ("max_pool2d",)

    def max_pool2d_input_grad(self, x, y, g, win):
        hits = [(tap == y).astype(g.dtype) for tap in win.taps(x)]
        share = g / sum(hits)
        return win.place([hit * share for hit in hits])

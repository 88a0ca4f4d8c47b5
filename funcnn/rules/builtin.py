"""The research rules funcnn ships: feedback alignment and sign symmetry.

Both keep the forward and the parameter gradients of conv2d and dense exact and
send the input delta back through other weights B in place of W: for a conv, the
stride-dilated deltas fully correlated with the rotated B
(`conv2d_input_grad(g, B, cfg, x_shape)`); for dense, `g @ B`. Pools have no
weight to replace and keep their exact rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.ops.init import he_normal
from funcnn.ops.registry import register_library
from funcnn.ops.rule import Rule


def _path_code(path: str) -> np.uint32:
    """A stable 32-bit code of a layer path (Python's hash() is salted per run)."""
    return np.uint32(
        int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "little")
    )


def draw_feedback(seed: int, path: str, shape, dtype, w_init=None):
    """The fixed feedback weights B of the layer at `path`.

    B is drawn by the layer's own initializer `w_init(key, shape, fan_in, dtype)`
    (He normal when None, as at op level), so it has the scale of the layer's
    weights, from the key `fold_in(PRNGKey(seed), sha256(path)[:4])`. `fan_in` is
    `prod(shape[1:])`: C_in // G * KH * KW for a conv, F_in for dense.

    Returns:
      B of `shape` (w's shape) and `dtype`.
    """
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _path_code(path))
    fan_in = math.prod(shape[1:])
    if w_init is None:
        w_init = he_normal
    return w_init(key, tuple(shape), fan_in, dtype)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FeedbackAlignment(Rule):
    """Feedback alignment (Lillicrap et al. 2016) for conv2d and dense: the input
    delta flows through fixed random weights B instead of W; dW and db are exact.

    Attributes:
      feedback: B, an array of w's shape, or None. With None, each layer draws
        its own B from `seed` and its layer path, with the layer's initializer
        (`draw_feedback`); at op level (path "") with He normal.
      seed: seeds the drawn B.

    Why B is derived rather than stored: it is a pure function of (seed, layer
    path, w's shape and dtype, the layer's initializer), none of which training
    changes, so B is the same at every step, after a checkpoint is restored and
    in a resumed run, with nothing added to params (where the optimizer and
    weight decay would touch it) or to checkpoints. Drawing it costs a few
    random numbers per layer per step, next to a conv. `rules.feedback_weights`
    shows the B each layer uses. A jax version that changes its random streams
    would change B, as it would change the initial weights.
    """

    feedback: Any = None
    seed: int = 0

    ops: ClassVar[tuple[str, ...]] = ("conv2d", "dense")
    array_fields: ClassVar[tuple[str, ...]] = ("feedback",)

    def __post_init__(self):
        func = "feedback_alignment"
        fb = self.feedback
        if fb is not None and (not hasattr(fb, "shape") or not hasattr(fb, "dtype")):
            raise TypeError(
                f"{func}: expected feedback to be an array of w's shape or None, got "
                f"{type(fb).__name__}."
            )
        if fb is not None and not jnp.issubdtype(fb.dtype, jnp.floating):
            raise TypeError(
                f"{func}: expected feedback with a floating dtype, got {fb.dtype}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise TypeError(f"{func}: expected seed to be an int, got {self.seed!r}.")
        if self.seed < 0:
            raise ValueError(f"{func}: expected seed >= 0, got {self.seed}.")

    def prepare(self, op, w, path="", w_init=None):
        if op not in self.ops:
            return self
        if self.feedback is None:
            b = draw_feedback(self.seed, path, w.shape, w.dtype, w_init)
            return dataclasses.replace(self, feedback=b)
        if tuple(self.feedback.shape) != tuple(w.shape):
            where = f" at layer {path!r}" if path else ""
            raise ValueError(
                f"feedback_alignment: expected feedback of w's shape {tuple(w.shape)} "
                f"for {op}{where}, got {tuple(self.feedback.shape)}. Give each layer "
                "its own B with a mapping {path: feedback_alignment(feedback=B)}, or "
                "feedback=None to draw one per layer."
            )
        if self.feedback.dtype != w.dtype:
            return dataclasses.replace(self, feedback=self.feedback.astype(w.dtype))
        return self

    def backward_weight(self, w):
        return self.feedback


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SignSymmetry(Rule):
    """Sign symmetry (Liao, Leibo & Poggio 2016; BioTorch's "uSF") for conv2d and
    dense: the input delta flows through B = sign(W), taken from the current W at
    every step; dW and db are exact."""

    ops: ClassVar[tuple[str, ...]] = ("conv2d", "dense")

    def backward_weight(self, w):
        return jnp.sign(w)


def feedback_alignment(feedback=None, seed: int = 0) -> FeedbackAlignment:
    """The feedback-alignment rule; also `grad="feedback_alignment"` (seed 0).

    Args:
      feedback: B of w's shape, e.g. `(C_out, C_in // G, KH, KW)` for a conv or
        `(F_out, F_in)` for dense; None draws one per layer (see
        `FeedbackAlignment`).
      seed: seeds the drawn B.
    """
    return FeedbackAlignment(feedback=feedback, seed=seed)


def sign_symmetry() -> SignSymmetry:
    """The sign-symmetry rule; also `grad="sign_symmetry"`."""
    return SignSymmetry()


register_library("feedback_alignment", FeedbackAlignment())
register_library("sign_symmetry", SignSymmetry())

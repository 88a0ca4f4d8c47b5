"""Kolen-Pollack learning (Kolen & Pollack 1994; Akrout et al. 2019): feedback
weights B that learn.

B starts as feedback alignment's B and receives the same update as W at every
step: `make_train_step` gives B the gradient dW of its layer, and the optimizer
transforms (momentum, Adam's moments, the learning rate) and decays both alike.
With weight decay λ, W - B then shrinks by the factor (1 - lr·λ) per plain SGD
step, since the gradient terms cancel; B and W align.

B lives in the train state (`TrainState.feedback`, `{layer path: B}`), made by
`create_train_state(..., grad=...)` (`init_feedback` here), saved in checkpoints
with the rest of the state, and read by the rule after `bind(feedback=...)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from funcnn.ops import registry
from funcnn.rules.feedback import Drawn, FeedbackAlignment
from funcnn.rules.model import params_at, walk
from funcnn.rules.scope import pick, scoped_at

FUNC = "kolen_pollack"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class KolenPollack(FeedbackAlignment):
    """Kolen-Pollack for conv2d and dense: the input delta flows through B, dW
    and db are exact, and the train step updates B as it updates W. It is
    feedback alignment whose B the train state holds.

    Fields:
      feedback: None (each layer uses its initial B: feedback alignment's draw
        for `seed` and `init`), one array of w's shape (at op level), or the
        train state's `{layer path: B}` (what `bind(feedback=...)` sets).
      seed, init, gain: the initial B, as `feedback_alignment(seed=seed,
        init=init, gain=gain)` draws it.
      clip: clamp each layer's input delta to `[-clip, clip]`, or None.

    At op level and in `model.apply`, the rule is feedback alignment with B as
    given; the learning of B is the train step's (`make_train_step`), which
    also needs a state made with `create_train_state(..., grad=...)`.

    Defaults: feedback alignment's (Glorot uniform at half scale), so that B
    starts as FA's B. W - B shrinks only under weight decay (by the factor
    `1 - lr * weight_decay` per plain SGD step); without it, B - W keeps its
    initial value and the rule stays partway between FA and backprop.

    Against Akrout et al. and bioflax: the same update, B ← B - (the update of
    W), for conv and dense layers alike.
    """

    learned_feedback: ClassVar[bool] = True
    name: ClassVar[str] = FUNC

    def __post_init__(self):
        if isinstance(self.feedback, Mapping):  # the train state's, bound
            Drawn.__post_init__(self)
        else:
            super().__post_init__()

    def bind(self, *, step=None, feedback=None):
        del step
        return (
            self if feedback is None else dataclasses.replace(self, feedback=feedback)
        )

    def prepare(self, op, w, path="", w_init=None):
        fb = self.feedback
        if op in self.ops and isinstance(fb, Mapping):
            if path not in fb:
                raise ValueError(
                    f"{FUNC}: expected the train state's feedback to hold B for "
                    f"layer {path!r}, got B for {sorted(fb)}. Create the state "
                    "with create_train_state(..., grad=...) for this model and grad."
                )
            return dataclasses.replace(self, feedback=fb[path]).prepare(op, w, path)
        return super().prepare(op, w, path, w_init)


def kolen_pollack(
    seed: int = 0, *, init: Any = "glorot_uniform", gain: float = 0.5, clip=None
) -> KolenPollack:
    """Kolen-Pollack: B starts as feedback alignment's B and learns with W; also
    `grad="kolen_pollack"` (seed 0). See `KolenPollack`."""
    return KolenPollack(None, seed, init, gain, clip)


def learned_layers(model: Any, grad: Any) -> list[tuple[str, Any, Any]]:
    """`(path, leaf, rule)` for every conv2d and dense layer whose rule keeps
    B in the train state, in forward order."""
    out = []
    for path, leaf in walk(model):
        info = getattr(leaf, "info", None)
        if info is None or info.w_init is None:
            continue
        scoped = scoped_at(grad, path)
        rule = registry.lookup(FUNC, pick(scoped, layer=FUNC))
        if isinstance(rule, str) or not rule.learned_feedback:
            continue
        if info.op in rule.ops:
            out.append((path, leaf, rule))
    return out


def init_feedback(model: Any, params: Any, grad: Any) -> dict[str, Any] | None:
    """The initial `{layer path: B}` of every layer whose rule learns B, or None
    when no layer's does. Each B is the rule's draw (`prepare`) for that layer,
    with w's shape and dtype."""
    layers = learned_layers(model, grad)
    if not layers:
        return None
    out = {}
    for path, leaf, rule in layers:
        w = params_at(params, path)["w"]
        unbound = dataclasses.replace(rule, feedback=None)
        out[path] = unbound.prepare(leaf.info.op, w, path, leaf.info.w_init).feedback
    return out


def check_feedback(func: str, model: Any, params: Any, grad: Any, feedback) -> None:
    """Raises a ValueError when `feedback` (the train state's) does not hold
    exactly one B of w's shape and dtype for each layer whose rule learns B."""
    layers = learned_layers(model, grad)
    want = {path: params_at(params, path)["w"] for path, _, _ in layers}
    hint = (
        " Create the state with create_train_state(model, input_shape, optimizer, "
        "grad=grad) for this model and grad."
    )
    if not want:
        if feedback:
            raise ValueError(
                f"{func}: expected a state without learned feedback weights for "
                f"grad={grad!r}, got B for {sorted(feedback)}.{hint}"
            )
        return
    if not isinstance(feedback, Mapping) or set(feedback) != set(want):
        got = sorted(feedback) if isinstance(feedback, Mapping) else feedback
        raise ValueError(
            f"{func}: expected the state's feedback to hold B for the Kolen-Pollack "
            f"layers {sorted(want)}, got {got!r}.{hint}"
        )
    for path, w in want.items():
        b = feedback[path]
        if tuple(b.shape) != tuple(w.shape) or b.dtype != w.dtype:
            raise ValueError(
                f"{func}: expected B of layer {path!r} with w's shape "
                f"{tuple(w.shape)} and dtype {w.dtype}, got {tuple(b.shape)} "
                f"{b.dtype}.{hint}"
            )

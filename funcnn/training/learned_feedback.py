"""Feedback weights that learn (Kolen-Pollack), as the train step handles them.

A state made by `create_train_state(..., grad=...)` for a rule that learns B
holds `feedback = {layer path: B}` next to the params, and its optimizer state is
the optimizer's state for the pair `(params, feedback)`. At every step each B
gets its layer's weight gradient dW as its own gradient, and one optimizer update
of the pair moves W and B alike: the same momentum or Adam transform, the same
learning rate, weight decay on both (B is a kernel of rank >= 2 like W), the
same global-norm clipping. Without such a rule, `feedback` is None and nothing
here changes the step.
"""

from __future__ import annotations

from typing import Any, cast

import optax

from funcnn.rules.model import params_at


def trainable(params: Any, feedback: Any) -> Any:
    """What the optimizer updates: params, or `(params, feedback)`."""
    return params if feedback is None else (params, feedback)


def feedback_grads(grads: Any, feedback: dict) -> dict:
    """Each B's gradient: its layer's dW, `{path: grads[path]["w"]}`."""
    return {path: params_at(grads, path)["w"] for path in feedback}


def update(optimizer, grads: Any, state: Any) -> tuple[Any, Any, Any]:
    """One optimizer update of the params (and of the learned B, if any).

    Returns:
      `(params, feedback, opt_state)` after the update; feedback is None when
      the state has none.
    """
    if state.feedback is None:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), None, opt_state
    pair = (state.params, state.feedback)
    pair_grads = (grads, feedback_grads(grads, state.feedback))
    updates, opt_state = optimizer.update(pair_grads, state.opt_state, pair)
    params, feedback = cast(tuple, optax.apply_updates(pair, updates))
    return params, feedback, opt_state

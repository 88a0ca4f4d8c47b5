"""The eager argument checks of the train step, run in Python before the jitted call.

Each check reads shapes, dtypes and Python types only: no device work, so a check
costs microseconds and never waits for the step still running on the device. The
jitted step itself stays a pure function; these checks live in a thin wrapper
around it, `CheckedStep`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def check_optimizer(func: str, optimizer: Any) -> None:
    """Refuses anything but an optax `GradientTransformation` (init and update)."""
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        named = f" {optimizer!r}" if isinstance(optimizer, str) else ""
        raise TypeError(
            f"{func}: expected an optax GradientTransformation as optimizer, got "
            f"{type(optimizer).__name__}{named}. Build one by name with "
            "funcnn.make_optimizer(name, learning_rate), e.g. "
            "make_optimizer('adam', 1e-3)."
        )


def check_state(func: str, state: Any, state_type: type) -> None:
    """Refuses a state of another type, or one whose buffers were donated."""
    if not isinstance(state, state_type):
        raise TypeError(
            f"{func}: expected a {state_type.__name__} from create_train_state as "
            f"the first argument, got {type(state).__name__}."
        )
    for leaf in jax.tree_util.tree_leaves(state):
        if getattr(leaf, "is_deleted", lambda: False)():
            raise ValueError(
                f"{func}: expected a live {state_type.__name__}, got one whose "
                "buffers an earlier call consumed (the step donates its input "
                "state). Use the state that call returned: `state, metrics = "
                "train_step(state, batch)`, or build the step with donate=False."
            )


def check_batch(func: str, batch: Any) -> None:
    """Refuses a batch that is not `(x, y)`: N >= 1 images and N integer labels."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = (
            f"a {type(batch).__name__} of {len(batch)} items"
            if isinstance(batch, (tuple, list))
            else f"{type(batch).__name__} of shape {getattr(batch, 'shape', '?')}"
        )
        raise TypeError(
            f"{func}: expected batch = (x, y), images x of shape (N, C, H, W) and "
            f"labels y of shape (N,), got {got}. Call train_step(state, (x, y))."
        )
    x, y = batch
    if not (hasattr(x, "shape") and hasattr(y, "shape")):
        raise TypeError(
            f"{func}: expected arrays x and y in batch = (x, y), got "
            f"{type(x).__name__} and {type(y).__name__}. Use numpy or jax arrays."
        )
    if len(x.shape) == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{func}: expected a batch of at least one example, got x of shape "
            f"{tuple(x.shape)}. Skip empty batches: their mean loss is 0 / 0."
        )
    n = x.shape[0]
    if tuple(y.shape) != (n,):
        one_hot = len(y.shape) == 2 and y.shape[0] == n
        hint = " Pass class indices, not one-hot rows: y.argmax(-1)." if one_hot else ""
        raise ValueError(
            f"{func}: expected labels y of shape (N,) = ({n},), got "
            f"{tuple(y.shape)}.{hint}"
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(
            f"{func}: expected integer class labels y in [0, K), got dtype "
            f"{y.dtype}. Cast them, e.g. y.astype(np.int32)."
        )


class CheckedStep:
    """A jitted `step(state, batch)` behind `check_state` and `check_batch`.

    Other attributes (`lower`, `trace`, `eval_shape`, ...) are the jitted
    function's, so `step.lower(state, batch).compile()` works as on `jax.jit`.
    """

    def __init__(self, jitted: Callable, state_type: type, doc: str | None):
        self._jitted = jitted
        self._state_type = state_type
        self.__doc__ = doc

    def __call__(self, state: Any, batch: Any) -> Any:
        check_state("train_step", state, self._state_type)
        check_batch("train_step", batch)
        return self._jitted(state, batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jitted, name)

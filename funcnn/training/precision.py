"""Mixed precision: run the forward and backward in a low-precision dtype while
parameters, optimizer state and BatchNorm statistics stay float32.

`make_train_step(..., compute_dtype=jnp.bfloat16)` casts the inputs and the float
parameters to bfloat16 at the start of the step. The casts are differentiable,
so the gradients flow back through them and arrive in float32, the parameters'
dtype; the hand-written conv and pool rules run unchanged on bfloat16 arrays.
BatchNorm computes its statistics in float32 (`funcnn.nn.norm`) and the loss is
taken on float32 logits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_compute_dtype(func: str, dtype: Any) -> Any:
    """Normalises `compute_dtype` (None, a name or a dtype) to a numpy dtype or None.

    Raises:
        ValueError: for a dtype that is not one of `COMPUTE_DTYPES`.
    """
    if dtype is None:
        return None
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"{func}: expected compute_dtype in {COMPUTE_DTYPES} or None, got "
            f"{dtype!r}. Use jnp.bfloat16 for mixed precision."
        )
    return jnp.dtype(name)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts every floating-point leaf of `tree` to `dtype`; others unchanged."""
    if dtype is None:
        return tree

    def cast(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.asarray(leaf).astype(dtype)
        return leaf

    return jax.tree_util.tree_map(cast, tree)

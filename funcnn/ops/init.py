"""Weight initializers: `init(key, shape, fan_in, dtype) -> array of shape`.

They sit at the bottom of the package because layers draw their weights with
them and the research rules (`funcnn.rules`) draw fixed feedback weights B at the
same scale. `fan_in` is the number of inputs to one output unit:
`C_in // groups * KH * KW` for a conv, `F_in` for dense.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]


def he_normal(key, shape: Shape, fan_in: int, dtype=jnp.float32):
    """Normal with std sqrt(2 / fan_in), suited to ReLU networks."""
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)

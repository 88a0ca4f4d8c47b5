"""Weight initializers: `init(key, shape, fan_in, dtype) -> array of shape`.

They sit at the bottom of the package because layers draw their weights with
them and the research rules (`funcnn.rules`) draw fixed feedback weights B at the
same scale. `fan_in` is the number of inputs to one output unit:
`C_in // groups * KH * KW` for a conv, `F_in` for dense. The fan-out, which the
Glorot (Xavier) initializers also use, is read from the shape as PyTorch does:
`shape[0] * KH * KW` for a conv `(C_out, C_in // G, KH, KW)`, `F_out` for dense.

`init_std(w_init, shape, fan_in)` is the standard deviation an initializer draws
with: exact for the ones here, measured on a fixed draw for any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]


def fan_out(shape: Shape) -> int:
    """Outputs one input unit reaches: `shape[0] * prod(shape[2:])`."""
    return shape[0] * math.prod(shape[2:])


def he_normal(key, shape: Shape, fan_in: int, dtype=jnp.float32):
    """Normal with std sqrt(2 / fan_in), suited to ReLU networks."""
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)


def glorot_uniform(key, shape: Shape, fan_in: int, dtype=jnp.float32):
    """Glorot (Xavier) uniform on `[-a, a]`, `a = sqrt(6 / (fan_in + fan_out))`:
    std `sqrt(2 / (fan_in + fan_out))`. BioTorch's default for W and B."""
    limit = math.sqrt(6.0 / (fan_in + fan_out(shape)))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def glorot_normal(key, shape: Shape, fan_in: int, dtype=jnp.float32):
    """Normal with the Glorot std `sqrt(2 / (fan_in + fan_out))`."""
    std = math.sqrt(2.0 / (fan_in + fan_out(shape)))
    return jax.random.normal(key, shape, dtype) * jnp.asarray(std, dtype)


def _known_std(w_init: Callable, shape: Shape, fan_in: int) -> float | None:
    if w_init is he_normal:
        return math.sqrt(2.0 / fan_in)
    if w_init in (glorot_uniform, glorot_normal):
        return math.sqrt(2.0 / (fan_in + fan_out(shape)))
    return None


def init_std(w_init: Callable | None, shape: Shape, fan_in: int) -> float:
    """The standard deviation `w_init` draws a `shape` array with (None: He).

    Exact for `he_normal`, `glorot_uniform` and `glorot_normal`; for any other
    initializer, the std of one float32 draw from `PRNGKey(0)` (a fixed number,
    close to the true std for all but tiny layers).
    """
    w_init = he_normal if w_init is None else w_init
    known = _known_std(w_init, tuple(shape), fan_in)
    if known is not None:
        return known
    # Evaluated now even inside a jit trace: the std is a Python number.
    with jax.ensure_compile_time_eval():
        draw = w_init(jax.random.PRNGKey(0), tuple(shape), fan_in, jnp.float32)
        return float(np.std(np.asarray(draw, np.float64)))

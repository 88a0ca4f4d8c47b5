"""Helpers shared by the tests of the CNN building blocks (transposed conv, adaptive
pools, indexed pooling and unpooling, layouts)."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

GRADS = ("custom", "autodiff")
LAYOUTS = ("NCHW", "NHWC")
ints = st.integers
one_or_pair = lambda lo, hi: st.one_of(  # noqa: E731
    ints(lo, hi), st.tuples(ints(lo, hi), ints(lo, hi))
)


@pytest.fixture
def torch_or_none(request):
    """The `run_torch` fixture, or None without torch: a sweep then still checks
    custom against autodiff and skips only the PyTorch comparison."""
    if importlib.util.find_spec("torch") is None:
        return None
    return request.getfixturevalue("run_torch")


def to_layout(a, layout):
    """An `(N, C, H, W)` array in `layout` (numpy, or jax while tracing)."""
    xp = jnp if isinstance(a, jax.core.Tracer) else np
    a = xp.asarray(a)
    return a if layout == "NCHW" else xp.transpose(a, (0, 2, 3, 1))


def to_nchw(a, layout):
    """An array in `layout` as `(N, C, H, W)` (numpy, or jax while tracing)."""
    xp = jnp if isinstance(a, jax.core.Tracer) else np
    a = xp.asarray(a)
    return a if layout == "NCHW" else xp.transpose(a, (0, 3, 1, 2))


def draw_values(rng, shape, integers: bool):
    """Standard normal values, or small integers (so that maxima tie)."""
    if integers:
        return rng.integers(-2, 3, shape).astype(np.float64)
    return rng.standard_normal(shape)


def distinct_values(shape, spacing, seed):
    """A random arrangement of evenly spaced values: no two closer than `spacing`,
    so finite differences never straddle a max's tie."""
    size = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(size)
    return jnp.asarray((order - size / 2).reshape(shape) * spacing, jnp.float64)


def hvp_both(f, args, tangents, cotangent):
    """For each grad mode, the Hessian-vector product of `<f(*args), cotangent>`
    (through tanh, so it is not linear) along `tangents`, one per arg."""

    def loss(*a, mode):
        return jnp.vdot(jnp.tanh(f(*a, grad=mode)), cotangent)

    out = {}
    for mode in GRADS:
        argnums = tuple(range(len(args)))
        grad = jax.grad(lambda *a, mode=mode: loss(*a, mode=mode), argnums)
        out[mode] = jax.jit(lambda a, t, grad=grad: jax.jvp(grad, a, t)[1])(
            tuple(args), tuple(tangents)
        )
    return out

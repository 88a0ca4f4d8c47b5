"""Helpers shared by the op and layer test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcnn


def _fast_compile_options():
    """XLA:CPU options that cut compile time 2-5x without changing what is computed.

    Compiling dominates the sweeps (every hypothesis example is a new shape). LLVM's
    optimisation level and the choice of fusion emitter change speed, not IEEE
    results; the HLO passes, where jax's conv VJP crashes, run as usual. Options a
    future jaxlib drops fall back to the defaults.
    """
    for options in (
        {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False},
        {"xla_backend_optimization_level": 0},
    ):
        try:
            jax.jit(jnp.sin, compiler_options=options).lower(1.0).compile()
        except Exception:  # an unknown option: try the next set
            continue
        return options
    return None


fast_jit = partial(jax.jit, compiler_options=_fast_compile_options())


def assert_close(actual, expected, rtol):
    """Max-norm relative check: |actual - expected| <= rtol * max|expected|;
    non-finite entries of `expected` must be matched exactly."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    scale = np.max(np.abs(expected[finite]), initial=0.0)
    err = np.max(np.abs(actual[finite] - expected[finite]), initial=0.0)
    assert err <= rtol * scale + 1e-300, f"max error {err:.3g}, scale {scale:.3g}"


def as_pair(v):
    """An int or a pair, as a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


def pads_of(padding, hw, eff, stride):
    """((top, bottom), (left, right)) for any accepted padding spelling."""
    if isinstance(padding, str):
        # jax's own SAME/VALID rule, independent of funcnn's.
        return tuple(lax.padtype_to_pads(hw, eff, stride, padding))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def cases_checked(module_name: str, sweep, monkeypatch) -> list:
    """Runs `sweep` (a hypothesis test of module `module_name`) with that module's
    `check_case` swapped for a recorder; returns the cases it would have checked,
    in its derandomized order."""
    import sys

    seen = []
    monkeypatch.setattr(
        sys.modules[module_name], "check_case", lambda case, *_: seen.append(case)
    )
    sweep()
    return seen


def rule_model(dtype=jnp.float32, layout="NCHW"):
    """The small CNN the rule tests train: conv 3x3 (3 channels, padding 1) -
    relu - max pool 2 - flatten - dense 5 - relu - dense 4, for 6x6 inputs;
    its conv and dense layers are "00_conv", "04_dense" and "06_dense"."""
    return funcnn.serial(
        funcnn.Conv2D(3, 3, padding=1, dtype=dtype, layout=layout),
        funcnn.Relu(),
        funcnn.MaxPool2D(2, layout=layout),
        funcnn.Flatten(layout=layout),
        funcnn.Dense(5, dtype=dtype),
        funcnn.Relu(),
        funcnn.Dense(4, dtype=dtype),
    )

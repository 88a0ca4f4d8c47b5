"""Tests for funcnn.ops.adaptive_avg_pool2d and adaptive_max_pool2d: hand-written
rules against jax autodiff and PyTorch (float64, values, gradients and indices, one
subprocess per sweep), ties, finite differences, second order, hand-computed
answers and the error messages."""

from __future__ import annotations

import re
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blocks import (
    GRADS,
    LAYOUTS,
    distinct_values,
    draw_values,
    hvp_both,
    ints,
    to_layout,
    to_nchw,
    torch_or_none,  # noqa: F401
)
from helpers import assert_close, fast_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from funcnn import ops

pytestmark = pytest.mark.usefixtures("release_compiled")

OPS = {"avg": ops.adaptive_avg_pool2d, "max": ops.adaptive_max_pool2d}


class Cfg(NamedTuple):
    op: str
    x_shape: tuple  # (N, C, H, W), whatever the layout
    output_size: object
    layout: str
    integers: bool

    def out_hw(self):
        size = self.output_size
        pair = (size, size) if isinstance(size, int) else size
        return tuple(
            self.x_shape[2 + i] if v is None else v for i, v in enumerate(pair)
        )

    def call(self, x, grad, return_indices=False):
        if self.op == "avg":
            return ops.adaptive_avg_pool2d(
                x, self.output_size, layout=self.layout, grad=grad
            )
        return ops.adaptive_max_pool2d(
            x,
            self.output_size,
            return_indices=return_indices,
            layout=self.layout,
            grad=grad,
        )


@st.composite
def configs(draw, op):
    size = ints(1, 5)
    output_size = draw(
        st.one_of(size, st.tuples(size, size), st.tuples(st.none(), size),
                  st.tuples(size, st.none()))
    )  # fmt: skip
    shape = (draw(st.sampled_from((1, 2))), draw(ints(1, 3)), draw(ints(1, 8)),
             draw(ints(1, 8)))  # fmt: skip
    return Cfg(op, shape, output_size, draw(st.sampled_from(LAYOUTS)),
               draw(st.booleans()))  # fmt: skip


def make_args(cfg, seed):
    rng = np.random.default_rng(seed)
    x = draw_values(rng, cfg.x_shape, cfg.integers)
    g = rng.standard_normal(cfg.x_shape[:2] + cfg.out_hw())
    return (jnp.asarray(to_layout(x, cfg.layout), jnp.float64),
            jnp.asarray(to_layout(g, cfg.layout), jnp.float64))  # fmt: skip


@partial(fast_jit, static_argnums=0)
def both_modes(cfg, x, g):
    """(y, dx) for each grad mode, and the custom mode's max indices (the autodiff
    mode computes its indices with the same function; see
    test_indices_agree_between_modes)."""
    out = {}
    for mode in GRADS:
        indexed = cfg.op == "max" and mode == "custom"
        y, vjp = jax.vjp(lambda x, m=mode, i=indexed: cfg.call(x, m, i), x)
        if indexed:
            (y, index), zero = y, np.zeros(y[1].shape, jax.dtypes.float0)
            out[mode] = (y, *vjp((g, zero)), index)
        else:
            out[mode] = (y, *vjp(g), None)
    return out


def check_config(cfg, seed):
    x, g = make_args(cfg, seed)
    res = both_modes(cfg, x, g)
    (y, dx, index), (y_ref, dx_ref, _) = res["custom"], res["autodiff"]
    assert to_nchw(y, cfg.layout).shape == cfg.x_shape[:2] + cfg.out_hw()
    assert_close(y, y_ref, 1e-12)
    assert_close(dx, dx_ref, 1e-12)
    if cfg.op == "max":
        assert index.dtype == jnp.int32
        index = to_nchw(index, cfg.layout)
    return [to_nchw(a, cfg.layout) for a in (x, g, y, dx)] + [index]


_TORCH = """
for i, c in enumerate(configs):
    x = t(f"x{i}", True)
    size = tuple(c["size"]) if isinstance(c["size"], list) else c["size"]
    if c["op"] == "max":
        y, index = F.adaptive_max_pool2d(x, size, return_indices=True)
        save(f"i{i}", index)
    else:
        y = F.adaptive_avg_pool2d(x, size)
    y.backward(t(f"g{i}"))
    save(f"y{i}", y)
    save(f"dx{i}", x.grad)
"""


def _sweep(op, examples):
    def test(torch_or_none):  # noqa: F811 (the fixture)
        records = []

        @settings(derandomize=True, database=None, deadline=None, max_examples=examples)
        @given(cfg=configs(op), seed=ints(0, 2**32 - 1))
        def sweep(cfg, seed):
            records.append((cfg, check_config(cfg, seed)))

        sweep()
        assert len(records) >= examples
        if torch_or_none is None:
            pytest.skip("torch is not installed: custom == autodiff checked only")
        arrays = {}
        for i, (_, (x, g, *_)) in enumerate(records):
            arrays.update({f"x{i}": x, f"g{i}": g})
        meta = [dict(op=op, size=cfg.output_size) for cfg, _ in records]
        theirs = torch_or_none(_TORCH, arrays, meta)
        for i, (_, (_, _, y, dx, index)) in enumerate(records):
            assert_close(y, theirs[f"y{i}"], 1e-12)
            assert_close(dx, theirs[f"dx{i}"], 1e-12)
            if op == "max":
                np.testing.assert_array_equal(index, theirs[f"i{i}"])

    return test


test_avg_sweep = _sweep("avg", 40)
test_max_sweep = _sweep("max", 40)
test_avg_sweep_slow = pytest.mark.slow(_sweep("avg", 600))
test_max_sweep_slow = pytest.mark.slow(_sweep("max", 600))


# -------------------------------------------------------------- hand-computed

G22 = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])


@pytest.mark.parametrize("mode", GRADS)
def test_avg_hand_3x3_to_2x2(mode):
    """3 rows to 2: windows [0, 2) and [1, 3), overlapping in the middle row."""
    x = jnp.arange(9.0).reshape(1, 1, 3, 3)
    f = partial(ops.adaptive_avg_pool2d, output_size=2, grad=mode)
    y, dx = jax.jit(lambda x, g: (f(x), jax.vjp(f, x)[1](g)[0]))(x, G22)
    np.testing.assert_array_equal(y[0, 0], [[2.0, 3.0], [5.0, 6.0]])
    want = np.array([[1, 3, 2], [4, 10, 6], [3, 7, 4]]) / 4
    np.testing.assert_array_equal(dx[0, 0], want)


@pytest.mark.parametrize("mode", GRADS)
def test_max_ties_first_in_row_major_order(mode):
    """All-equal overlapping windows: each window's first position wins, in the
    gradient and in the indices."""
    y, index, dx = _max_and_grad(jnp.ones((1, 1, 3, 3)), G22, 2, mode)
    np.testing.assert_array_equal(index[0, 0], [[0, 1], [3, 4]])
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    # A tie across rows goes to the upper row, though its column is later.
    x = jnp.array([[[[0.0, 5.0], [5.0, 0.0]]]])
    y, index, dx = _max_and_grad(x, jnp.ones((1, 1, 1, 1)), 1, mode)
    assert int(index[0, 0, 0, 0]) == 1 and float(y[0, 0, 0, 0]) == 5.0
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


@partial(jax.jit, static_argnums=(2, 3))
def _max_and_grad(x, g, output_size, mode):
    f = partial(
        ops.adaptive_max_pool2d, output_size=output_size, return_indices=True, grad=mode
    )
    (y, index), vjp = jax.vjp(f, x)
    (dx,) = vjp((g, np.zeros(index.shape, jax.dtypes.float0)))
    return y, index, dx


@pytest.mark.parametrize("layout", LAYOUTS)
def test_indices_agree_between_modes(layout):
    x = jnp.asarray(np.random.default_rng(3).integers(0, 3, (2, 3, 7, 5)), jnp.float64)
    x = jnp.asarray(to_layout(x, layout))
    _, custom = ops.adaptive_max_pool2d(x, 3, return_indices=True, layout=layout)
    y, auto = ops.adaptive_max_pool2d(
        x, 3, return_indices=True, layout=layout, grad="autodiff"
    )
    np.testing.assert_array_equal(custom, auto)
    np.testing.assert_array_equal(y, ops.adaptive_max_pool2d(x, 3, layout=layout))


def test_max_nan_wins_last():
    """As in PyTorch: a NaN wins its window, the last NaN in row-major order."""
    x = jnp.array([[[[1.0, np.nan, 0.0], [np.nan, 2.0, 3.0]]]])
    y, index = ops.adaptive_max_pool2d(x, (1, 1), return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and int(index[0, 0, 0, 0]) == 3


def test_upsampling_output_repeats_rows():
    """OH > H: windows of one row, repeating inputs, as in PyTorch."""
    x = jnp.array([[[[1.0], [2.0]]]])
    for op in OPS.values():
        np.testing.assert_array_equal(op(x, (4, 1))[0, 0, :, 0], [1, 1, 2, 2])


# ---------------------------------------------- finite differences, second order

FD_CFGS = [
    Cfg("avg", (2, 2, 7, 5), (3, 2), "NCHW", False),
    Cfg("avg", (1, 2, 3, 4), (5, None), "NHWC", False),
    Cfg("max", (2, 2, 7, 5), (3, 2), "NHWC", False),
    Cfg("max", (1, 3, 5, 6), 1, "NCHW", False),
]


@pytest.mark.parametrize("cfg", FD_CFGS)
def test_finite_differences(cfg):
    x = distinct_values(cfg.x_shape, 0.5, seed=12)
    x = jnp.asarray(to_layout(x, cfg.layout))
    f = jax.jit(partial(OPS[cfg.op], output_size=cfg.output_size, layout=cfg.layout))
    check_grads(f, (x,), order=1, modes=["rev"])


@pytest.mark.parametrize("cfg", [FD_CFGS[1], FD_CFGS[2]])
def test_second_order_matches_autodiff(cfg):
    x = jnp.asarray(to_layout(distinct_values(cfg.x_shape, 0.1, seed=13), cfg.layout))
    rng = np.random.default_rng(14)
    v = jnp.asarray(rng.standard_normal(x.shape))
    f = partial(OPS[cfg.op], output_size=cfg.output_size, layout=cfg.layout)
    g = jnp.asarray(rng.standard_normal(f(x).shape))
    res = hvp_both(f, (x,), (v,), g)
    assert np.any(np.asarray(res["autodiff"][0]) != 0)
    assert_close(res["custom"][0], res["autodiff"][0], 1e-10)


def test_max_saves_only_the_indices():
    x = jnp.asarray(np.random.default_rng(15).standard_normal((2, 3, 7, 7)))
    _, vjp = jax.vjp(partial(ops.adaptive_max_pool2d, output_size=3), x)
    leaves = jax.tree_util.tree_leaves(vjp)
    assert [(a.dtype, a.shape) for a in leaves] == [(jnp.int32, (2, 3, 3, 3))]
    _, vjp = jax.vjp(partial(ops.adaptive_avg_pool2d, output_size=3), x)
    assert jax.tree_util.tree_leaves(vjp) == []


@pytest.mark.parametrize("cfg", FD_CFGS[:3])
def test_backward_has_no_scatter(cfg):
    x = jnp.ones(to_layout(np.zeros(cfg.x_shape), cfg.layout).shape)
    f = partial(OPS[cfg.op], output_size=cfg.output_size, layout=cfg.layout)
    text = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(jnp.sin(f(x)))))(x))
    assert "scatter" not in text


# ----------------------------------------------------------------------- errors

X = jnp.zeros((2, 3, 5, 5))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "kwargs, err, message",
    [
        (dict(output_size=0), ValueError,
         "expected output_size >= 1 on each axis, got 0. Use None to keep an axis's "
         "size."),
        (dict(output_size=(2, 0)), ValueError,
         "expected output_size >= 1 on each axis, got (2, 0)."),
        (dict(output_size=2.5), TypeError,
         "expected output_size as an int or a pair (OH, OW) of ints or None, got 2.5."),
        (dict(output_size=(1, 2, 3)), TypeError,
         "expected output_size as an int or a pair (OH, OW) of ints or None, got "
         "(1, 2, 3)."),
        (dict(output_size=2, layout="CHWN"), ValueError,
         "expected layout to be one of ('NCHW', 'NHWC'), got 'CHWN'. Use \"NCHW\""),
        (dict(output_size=2, grad="fa"), ValueError,
         "expected grad to be one of ('custom', 'autodiff', 'feedback_alignment', "
         "'sign_symmetry', 'usf', 'brsf', 'frsf', 'direct_feedback_alignment', "
         "'kolen_pollack'), a name given to funcnn.rules.register or a "
         "funcnn.rules.Rule value, got 'fa'."),
    ],
)  # fmt: skip
def test_errors(op, kwargs, err, message):
    name = OPS[op].__name__
    with pytest.raises(err, match=re.escape(f"{name}: {message}")):
        OPS[op](X, **kwargs)
    with pytest.raises(err, match=re.escape(f"{name}: {message}")):
        jax.jit(partial(OPS[op], **kwargs))(X)


def test_error_rank_and_empty_input():
    with pytest.raises(ValueError, match=re.escape(
        "adaptive_max_pool2d: expected x of rank 4 (N, H, W, C), got shape (5, 5)."
    )):  # fmt: skip
        ops.adaptive_max_pool2d(X[0, 0], 2, layout="NHWC")
    with pytest.raises(ValueError, match=re.escape(
        "adaptive_avg_pool2d: expected x with H and W of at least 1, got shape "
        "(2, 3, 0, 5)."
    )):  # fmt: skip
        ops.adaptive_avg_pool2d(jnp.zeros((2, 3, 0, 5)), 2)

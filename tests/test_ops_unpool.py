"""Tests for max_pool2d(return_indices=True) and max_unpool2d: the hand-written
rules against jax autodiff, numpy and PyTorch (float64, values, gradients and
indices, one subprocess per sweep), ties, finite differences, second order and the
error messages."""

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
    one_or_pair,
    to_layout,
    to_nchw,
    torch_or_none,  # noqa: F401
)
from helpers import as_pair, assert_close, fast_jit
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from funcnn import ops
from funcnn.ops._windows import empty_windows, window_config

pytestmark = pytest.mark.usefixtures("release_compiled")

FLOAT0 = jax.dtypes.float0


class Cfg(NamedTuple):
    x_shape: tuple  # the pool's input (N, C, H, W), whatever the layout
    window: tuple
    stride: tuple
    padding: tuple  # symmetric (PH, PW), as PyTorch takes it
    dilation: tuple
    ceil_mode: bool
    layout: str
    integers: bool

    @property
    def pool_kw(self):
        return dict(window=self.window, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, ceil_mode=self.ceil_mode,
                    layout=self.layout)  # fmt: skip

    def window_config(self):
        shape = jax.ShapeDtypeStruct(to_layout(np.zeros(self.x_shape), self.layout)
                                     .shape, jnp.float64)  # fmt: skip
        args = (self.window, self.stride, self.padding, self.dilation, self.ceil_mode)
        return window_config("test", shape, *args, self.layout)[0]


@st.composite
def configs(draw, dilated=True):
    """Pools PyTorch accepts (symmetric padding up to half the raw window) whose
    windows all reach the input (return_indices needs a winner in each)."""
    window = as_pair(draw(one_or_pair(1, 3)))
    stride = as_pair(draw(one_or_pair(1, 3)))
    dilation = as_pair(draw(one_or_pair(1, 2))) if dilated else (1, 1)
    padding = tuple(draw(ints(0, k // 2)) for k in window)
    hw = []
    for i in range(2):
        eff = dilation[i] * (window[i] - 1) + 1
        low = max(1, eff - 2 * padding[i])
        hw.append(draw(ints(low, low + 6)))
    shape = (draw(st.sampled_from((1, 2))), draw(ints(1, 3)), *hw)
    cfg = Cfg(shape, window, stride, padding, dilation, draw(st.booleans()),
              draw(st.sampled_from(LAYOUTS)), draw(st.booleans()))  # fmt: skip
    assume(not empty_windows(cfg.window_config()))
    return cfg


def make_x(cfg, seed):
    rng = np.random.default_rng(seed)
    x = draw_values(rng, cfg.x_shape, cfg.integers)
    return jnp.asarray(to_layout(x, cfg.layout), jnp.float64), rng


def torch_meta(cfg):
    return dict(window=cfg.window, stride=cfg.stride, padding=cfg.padding,
                dilation=cfg.dilation, ceil_mode=cfg.ceil_mode,
                size=cfg.x_shape[2:])  # fmt: skip


def _sweep_test(strategy, check, compare, examples):
    def test(torch_or_none):  # noqa: F811 (the fixture)
        records = []

        @settings(derandomize=True, database=None, deadline=None, max_examples=examples)
        @given(cfg=strategy, seed=ints(0, 2**32 - 1))
        def sweep(cfg, seed):
            records.append((cfg, check(cfg, seed)))

        sweep()
        assert len(records) >= examples
        if torch_or_none is None:
            pytest.skip("torch is not installed: the other references checked only")
        compare(torch_or_none, records)

    return test


# ------------------------------------------------------ max_pool2d with indices


@partial(fast_jit, static_argnums=0)
def pool_both(kw, x, g):
    """(y, indices, dx) of the custom rule, (y, dx) of autodiff (whose indices
    come from the same function; see test_indices_agree_between_modes)."""
    f = partial(ops.max_pool2d, return_indices=True, **dict(kw))
    (y, index), vjp = jax.vjp(f, x)
    custom = (y, index, *vjp((g, np.zeros(index.shape, FLOAT0))))
    y, vjp = jax.vjp(partial(ops.max_pool2d, grad="autodiff", **dict(kw)), x)
    return {"custom": custom, "autodiff": (y, *vjp(g))}


def check_pool(cfg, seed):
    x, rng = make_x(cfg, seed)
    out_hw = cfg.window_config().out_hw
    g = jnp.asarray(
        to_layout(rng.standard_normal(cfg.x_shape[:2] + out_hw), cfg.layout)
    )
    res = pool_both(tuple(sorted(cfg.pool_kw.items())), x, g)
    (y, index, dx), (y_ref, dx_ref) = res["custom"], res["autodiff"]
    np.testing.assert_array_equal(y, y_ref)
    assert index.dtype == jnp.int32
    assert_close(dx, dx_ref, 1e-12)
    # The indices point at the values: y[n, c].flat == x[n, c].flat[index].
    xs, ys, ix = (to_nchw(a, cfg.layout) for a in (x, y, index))
    n, c = xs.shape[:2]
    flat = xs.reshape(n, c, -1)
    picked = np.take_along_axis(flat, ix.reshape(n, c, -1), axis=2)
    np.testing.assert_array_equal(picked.reshape(ys.shape), ys)
    return [to_nchw(a, cfg.layout) for a in (x, g, y, index, dx)]


_TORCH_POOL = """
for i, c in enumerate(configs):
    x = t(f"x{i}", True)
    y, index = F.max_pool2d(x, c["window"], c["stride"], c["padding"], c["dilation"],
                            ceil_mode=c["ceil_mode"], return_indices=True)
    y.backward(t(f"g{i}"))
    save(f"y{i}", y)
    save(f"i{i}", index)
    save(f"dx{i}", x.grad)
"""


def compare_pool(run_torch, records):
    arrays = {}
    for i, (_, (x, g, *_)) in enumerate(records):
        arrays.update({f"x{i}": x, f"g{i}": g})
    theirs = run_torch(_TORCH_POOL, arrays, [torch_meta(c) for c, _ in records])
    for i, (_, (_, _, y, index, dx)) in enumerate(records):
        np.testing.assert_array_equal(y, theirs[f"y{i}"])
        np.testing.assert_array_equal(index, theirs[f"i{i}"])
        assert_close(dx, theirs[f"dx{i}"], 1e-12)


test_pool_indices_sweep = _sweep_test(configs(), check_pool, compare_pool, 40)
test_pool_indices_sweep_slow = pytest.mark.slow(
    _sweep_test(configs(), check_pool, compare_pool, 600)
)


# ----------------------------------------------------------------- max_unpool2d


def np_unpool(v, index, out_hw, g):
    """numpy oracle in NCHW: the scatter, and the gather that is its backward."""
    n, c = v.shape[:2]
    out = np.zeros((n, c, out_hw[0] * out_hw[1]))
    flat = index.reshape(n, c, -1)
    np.put_along_axis(out, flat, v.reshape(n, c, -1), axis=2)
    dv = np.take_along_axis(g.reshape(n, c, -1), flat, axis=2)
    return out.reshape(n, c, *out_hw), dv.reshape(v.shape)


def np_pool_indices(cfg, x):
    """A max pool's flat indices in numpy: the first maximum of each window, in
    row-major order over its taps on the input (`(N, C, OH, OW)`, int32)."""
    wc = cfg.window_config()
    n, c, h, w = x.shape
    out = np.zeros((n, c, *wc.out_hw), np.int32)
    for i in range(wc.out_hw[0]):
        for j in range(wc.out_hw[1]):
            taps = [
                (r, q)
                for a in range(wc.window[0])
                for b in range(wc.window[1])
                if 0 <= (r := i * wc.stride[0] + a * wc.dilation[0] - wc.pads[0][0]) < h
                and 0
                <= (q := j * wc.stride[1] + b * wc.dilation[1] - wc.pads[1][0])
                < w
            ]
            vals = np.stack([x[:, :, r, q] for r, q in taps], -1)
            first = vals.argmax(-1)
            out[:, :, i, j] = np.array([r * w + q for r, q in taps])[first]
    return out


@partial(fast_jit, static_argnums=0)
def unpool_both(kw, v, index, g):
    out = {}
    for mode in GRADS:
        f = partial(ops.max_unpool2d, grad=mode, **dict(kw))
        u, vjp = jax.vjp(lambda v, f=f: f(v, index), v)
        out[mode] = (u, *vjp(g))
    return out


def check_unpool(cfg, seed):
    """Indices from a max pool (ties when integer-valued), fresh values to unpool.
    Custom against numpy always, and against autodiff where each plane's indices
    are distinct (jax's scatter rule sends a shared position's delta to one value,
    PyTorch's and ours to each)."""
    x, rng = make_x(cfg, seed)
    index = jnp.asarray(to_layout(np_pool_indices(cfg, to_nchw(x, cfg.layout)),
                                  cfg.layout))  # fmt: skip
    v = jnp.asarray(rng.standard_normal(index.shape))
    out_hw = cfg.x_shape[2:]
    g = jnp.asarray(to_layout(rng.standard_normal(cfg.x_shape), cfg.layout))
    kw = dict(window=cfg.window, stride=cfg.stride, padding=cfg.padding,
              output_size=out_hw, layout=cfg.layout)  # fmt: skip
    res = unpool_both(tuple(sorted(kw.items())), v, index, g)
    (u, dv), (u_ref, dv_ref) = res["custom"], res["autodiff"]
    vs, ix, gs = (to_nchw(a, cfg.layout) for a in (v, index, g))
    u_np, dv_np = np_unpool(vs, ix, out_hw, gs)
    np.testing.assert_array_equal(to_nchw(u, cfg.layout), u_np)
    np.testing.assert_array_equal(to_nchw(dv, cfg.layout), dv_np)
    flat = ix.reshape(ix.shape[0], ix.shape[1], -1)
    if all(len(np.unique(p)) == p.size for p in flat.reshape(-1, flat.shape[2])):
        np.testing.assert_array_equal(u, u_ref)
        np.testing.assert_array_equal(dv, dv_ref)
    return [vs, ix, gs, to_nchw(u, cfg.layout), to_nchw(dv, cfg.layout)]


_TORCH_UNPOOL = """
for i, c in enumerate(configs):
    v = t(f"v{i}", True)
    u = F.max_unpool2d(v, torch.tensor(data[f"i{i}"]).long(), c["window"], c["stride"],
                       c["padding"], output_size=c["size"])
    u.backward(t(f"g{i}"))
    save(f"u{i}", u)
    save(f"dv{i}", v.grad)
"""


def compare_unpool(run_torch, records):
    arrays = {}
    for i, (_, (v, index, g, _, _)) in enumerate(records):
        arrays.update({f"v{i}": v, f"i{i}": index, f"g{i}": g})
    theirs = run_torch(_TORCH_UNPOOL, arrays, [torch_meta(c) for c, _ in records])
    for i, (_, (_, _, _, u, dv)) in enumerate(records):
        np.testing.assert_array_equal(u, theirs[f"u{i}"])
        np.testing.assert_array_equal(dv, theirs[f"dv{i}"])


# Unpooling sizes its output from window, stride and padding, which a dilated
# pool's input need not fit; PyTorch's unpool knows no dilation either.
test_unpool_sweep = _sweep_test(
    configs(dilated=False), check_unpool, compare_unpool, 40
)
test_unpool_sweep_slow = pytest.mark.slow(
    _sweep_test(configs(dilated=False), check_unpool, compare_unpool, 600)
)


# -------------------------------------------------------------- ties, by hand


@pytest.mark.parametrize("layout", LAYOUTS)
def test_indices_agree_between_modes(layout):
    x = jnp.asarray(np.random.default_rng(5).integers(0, 3, (2, 3, 7, 6)), jnp.float64)
    x = jnp.asarray(to_layout(x, layout))
    kw = dict(window=3, stride=2, padding=1, dilation=(1, 2), layout=layout)
    custom = ops.max_pool2d(x, return_indices=True, **kw)
    auto = ops.max_pool2d(x, return_indices=True, grad="autodiff", **kw)
    for a, b in zip(custom, auto):
        np.testing.assert_array_equal(a, b)


def test_indices_ties_go_to_the_first_position():
    """All-equal overlapping windows: each window's first position in row-major
    order, as in PyTorch; a window that starts in the padding points at its first
    input position."""
    x = jnp.zeros((1, 1, 3, 3))
    _, index = ops.max_pool2d(x, 2, stride=1, return_indices=True)
    np.testing.assert_array_equal(index[0, 0], [[0, 1], [3, 4]])
    _, index = ops.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    np.testing.assert_array_equal(index[0, 0], [[0, 1], [3, 4]])
    # -inf inputs tie with the -inf padding: the input position still wins.
    x = jnp.full((1, 1, 2, 2), -jnp.inf)
    _, index = ops.max_pool2d(x, 3, stride=1, padding=1, return_indices=True)
    np.testing.assert_array_equal(index[0, 0], [[0, 0], [0, 0]])


def test_unpool_round_trip_by_hand():
    """Pool 2x2 then unpool: each maximum back in place, zeros elsewhere; the
    backward reads the output delta at each maximum."""
    x = jnp.array([[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 7.0, 7.0]]]])
    y, index = ops.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(index[0, 0], [[1, 6]])
    for mode in GRADS:
        f = partial(ops.max_unpool2d, indices=index, window=2, grad=mode)
        u, vjp = jax.vjp(f, y)
        np.testing.assert_array_equal(u[0, 0], [[0, 5, 0, 0], [0, 0, 7, 0]])
        g = jnp.arange(8.0).reshape(1, 1, 2, 4)
        np.testing.assert_array_equal(vjp(g)[0][0, 0], [[1.0, 6.0]])


def test_unpool_shared_position_gives_each_value_its_delta():
    """Overlapping windows can share a winner: unpooling writes it once and, like
    PyTorch, gives the delta there to every value that points at it."""
    index = jnp.array([[[[1, 1]]]], jnp.int32)
    v = jnp.array([[[[2.0, 2.0]]]])
    f = partial(ops.max_unpool2d, indices=index, window=(1, 2), stride=(1, 1))
    u, vjp = jax.vjp(f, v)
    np.testing.assert_array_equal(u[0, 0], [[0.0, 2.0, 0.0]])
    np.testing.assert_array_equal(
        vjp(jnp.array([[[[5.0, 6.0, 7.0]]]]))[0], [[[[6, 6]]]]
    )


# --------------------------------------- finite differences and second order

POOL_CFG = Cfg((2, 2, 5, 6), (3, 2), (2, 2), (1, 1), (1, 1), True, "NHWC", False)


def test_finite_differences():
    x = jnp.asarray(to_layout(distinct_values(POOL_CFG.x_shape, 0.5, 21), "NHWC"))

    def pooled(x):
        y, index = ops.max_pool2d(x, return_indices=True, **POOL_CFG.pool_kw)
        return y

    check_grads(jax.jit(pooled), (x,), order=1, modes=["rev"])
    # Distinct indices (a non-overlapping pool): there unpooling is linear in v
    # with a derivative that finite differences see. A shared position takes one
    # of its values, so there no rule is the derivative; see the op's docstring.
    _, index = ops.max_pool2d(x, 2, return_indices=True, layout="NHWC")
    v = jnp.asarray(np.random.default_rng(22).standard_normal(index.shape))
    unpool = partial(ops.max_unpool2d, indices=index, window=2, output_size=(5, 6),
                     layout="NHWC")  # fmt: skip
    check_grads(jax.jit(unpool), (v,), order=2, modes=["rev"])


def test_second_order_matches_autodiff():
    rng = np.random.default_rng(23)
    x = jnp.asarray(to_layout(distinct_values(POOL_CFG.x_shape, 0.1, 24), "NHWC"))

    def pooled(x, grad):
        return ops.max_pool2d(x, return_indices=True, grad=grad, **POOL_CFG.pool_kw)[0]

    y, index = ops.max_pool2d(x, return_indices=True, **POOL_CFG.pool_kw)
    res = hvp_both(pooled, (x,), (jnp.asarray(rng.standard_normal(x.shape)),),
                   jnp.asarray(rng.standard_normal(y.shape)))  # fmt: skip
    assert np.any(np.asarray(res["autodiff"][0]) != 0)
    assert_close(res["custom"][0], res["autodiff"][0], 1e-10)
    # Non-overlapping (distinct indices), so autodiff's scatter rule agrees.
    y, index = ops.max_pool2d(x, 2, return_indices=True, layout="NHWC")
    unpool = partial(ops.max_unpool2d, indices=index, window=2, output_size=(5, 6),
                     layout="NHWC")  # fmt: skip
    res = hvp_both(unpool, (y,), (jnp.asarray(rng.standard_normal(y.shape)),),
                   jnp.asarray(rng.standard_normal(x.shape)))  # fmt: skip
    assert np.any(np.asarray(res["autodiff"][0]) != 0)
    assert_close(res["custom"][0], res["autodiff"][0], 1e-10)


def test_unpool_saves_only_the_indices():
    v = jnp.ones((2, 3, 2, 2))
    index = jnp.zeros((2, 3, 2, 2), jnp.int32)
    _, vjp = jax.vjp(partial(ops.max_unpool2d, indices=index, window=2), v)
    leaves = jax.tree_util.tree_leaves(vjp)
    assert [(a.dtype, a.shape) for a in leaves] == [(jnp.int32, (2, 3, 2, 2))]


def test_out_of_range_indices_are_dropped():
    """Values cannot be checked before tracing: a position outside the output is
    not written (not counted from the end), and reads no delta."""
    v = jnp.array([[[[1.0, 2.0]]]])
    index = jnp.array([[[[-1, 3]]]], jnp.int32)
    for mode in GRADS:
        f = partial(ops.max_unpool2d, indices=index, window=(1, 2), grad=mode)
        u, vjp = jax.vjp(f, v)
        np.testing.assert_array_equal(u[0, 0], [[0.0, 0.0, 0.0, 2.0]])
        if mode == "custom":
            np.testing.assert_array_equal(vjp(jnp.ones((1, 1, 1, 4)))[0], [[[[0, 1]]]])


# ----------------------------------------------------------------------- errors

Y = jnp.zeros((2, 3, 4, 4))
I32 = jnp.zeros((2, 3, 4, 4), jnp.int32)

UNPOOL_ERRORS = [
    (dict(indices=I32[:, :2]), ValueError,
     "max_unpool2d: expected indices of y's shape (2, 3, 4, 4), got (2, 2, 4, 4). "
     "Pass the indices the max pool returned with these values."),
    (dict(indices=I32.astype(jnp.float32)), TypeError,
     "max_unpool2d: expected indices with an integer dtype (int32, as max_pool2d "
     "returns), got float32."),
    (dict(indices=[[0]]), TypeError,
     "max_unpool2d: expected indices to be an array, got list."),
    (dict(indices=I32, output_size=(10, 8)), ValueError,
     "max_unpool2d: expected output_size along H strictly between 6 and 10 (the "
     "sizes a stride-2 pool maps to 4), got 10. Pass the pooled input's size."),
    (dict(indices=I32, output_size=(8, 6)), ValueError,
     "expected output_size along W strictly between 6 and 10"),
    (dict(indices=I32, output_size=(2, 3, 9, 9, 1)), TypeError,
     "max_unpool2d: expected output_size as a pair (H, W) or a full shape, got "
     "(2, 3, 9, 9, 1)."),
    (dict(indices=I32, output_size=(2, 4, 9, 9)), ValueError,
     "max_unpool2d: expected output_size with y's batch and channels, got "
     "(2, 4, 9, 9) for y of shape (2, 3, 4, 4)."),
    (dict(indices=I32, layout="nhwc"), ValueError,
     "max_unpool2d: expected layout to be one of ('NCHW', 'NHWC'), got 'nhwc'."),
    (dict(indices=I32, padding="SAME"), TypeError,
     "max_unpool2d: expected padding as an int, a pair (ph, pw) or a pair of pairs"),
    (dict(indices=I32, grad="fa"), ValueError,
     "max_unpool2d: expected grad to be one of ('custom', 'autodiff', "
     "'feedback_alignment', 'sign_symmetry', 'usf', 'brsf', 'frsf', "
     "'direct_feedback_alignment', 'kolen_pollack'), a name given to "
     "funcnn.rules.register or a funcnn.rules.Rule value, got 'fa'."),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, err, message", UNPOOL_ERRORS)
def test_unpool_errors(kwargs, err, message):
    with pytest.raises(err, match=re.escape(message)):
        ops.max_unpool2d(Y, window=2, **kwargs)
    if not isinstance(kwargs["indices"], list):
        with pytest.raises(err, match=re.escape(message)):
            jax.jit(partial(ops.max_unpool2d, window=2, **kwargs))(Y)


def test_unpool_full_output_size_in_the_layout():
    u = ops.max_unpool2d(Y, I32, 2, output_size=(2, 3, 9, 8))
    assert u.shape == (2, 3, 9, 8)
    yt, it = jnp.transpose(Y, (0, 2, 3, 1)), jnp.transpose(I32, (0, 2, 3, 1))
    u = ops.max_unpool2d(yt, it, 2, output_size=(2, 9, 8, 3), layout="NHWC")
    assert u.shape == (2, 9, 8, 3)


def test_pool_index_errors():
    x = jnp.zeros((1, 1, 1, 5))
    # Taps at rows -2 and 1 of a one-row input: this window is all padding.
    with pytest.raises(ValueError, match=re.escape(
        "max_pool2d: expected every window to reach the input with return_indices="
        "True, got a window along H whose dilated taps all fall in the padding. Use "
        "less padding or dilation."
    )):  # fmt: skip
        ops.max_pool2d(x, (2, 1), stride=1, dilation=(3, 1), padding=(2, 0),
                       return_indices=True)  # fmt: skip
    # Without indices the same pool is defined: -inf there, and no gradient.
    y = ops.max_pool2d(x, (2, 1), stride=1, dilation=(3, 1), padding=(2, 0))
    assert np.isneginf(np.asarray(y)[0, 0, 0]).all()
    with pytest.raises(TypeError, match=re.escape(
        "max_pool2d: expected return_indices to be a bool, got 1."
    )):  # fmt: skip
        ops.max_pool2d(x, 1, return_indices=1)

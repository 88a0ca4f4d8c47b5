"""Tests for funcnn.ops.max_pool2d and avg_pool2d: the hand-written backward rules
against jax autodiff, a numpy loop reference, float64 finite differences,
hand-computed answers (ties included) and PyTorch (in a subprocess)."""

from __future__ import annotations

import zlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import as_pair, assert_close, cases_checked, fast_jit, pads_of
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from funcnn import ops
from funcnn.ops import _windows
from funcnn.ops.kernels import max_pool as pool

GRADS = ("custom", "autodiff")
OPS = {"max": ops.max_pool2d, "avg": ops.avg_pool2d}
pytestmark = pytest.mark.usefixtures("release_compiled")


class Cfg(NamedTuple):
    op: str  # "max" or "avg"
    x_shape: tuple
    kwargs: tuple  # sorted (name, value) pairs: hashable, usable as a jit static

    @property
    def kw(self):
        return dict(self.kwargs)

    def geometry(self):
        """(window, stride, dilation, pads, out_hw), worked out by the test."""
        kw = self.kw
        window = as_pair(kw["window"])
        stride = window if kw.get("stride") is None else as_pair(kw["stride"])
        dilation = as_pair(kw.get("dilation", 1))
        eff = tuple(d * (k - 1) + 1 for d, k in zip(dilation, window))
        pads = pads_of(kw.get("padding", 0), self.x_shape[2:], eff, stride)
        out = []
        for size, (lo, hi), e, s in zip(self.x_shape[2:], pads, eff, stride):
            span = size + lo + hi - e
            if span < 0:  # the window does not fit: no output
                out.append(0)
            elif not kw.get("ceil_mode", False):
                out.append(span // s + 1)
                continue
            # PyTorch's rule: round up, but no window may start in the high padding.
            n = -(-span // s) + 1
            out.append(n - 1 if (n - 1) * s >= size + lo else n)
        return window, stride, dilation, pads, tuple(out)


def make_cfg(op, x_shape, **kw):
    return Cfg(op, tuple(x_shape), tuple(sorted(kw.items())))


def np_pool(cfg, x, g):
    """Loop-over-windows pooling and its VJP in float64: (y, dx).

    Max takes the first maximum in row-major window order; mean divides by the
    window's taps inside the explicitly padded input (count_include_pad) or inside
    the input.
    """
    window, stride, dilation, pads, (oh, ow) = cfg.geometry()
    n, c, h, w = x.shape
    include_pad = cfg.kw.get("count_include_pad", True)
    y, dx = np.zeros((n, c, oh, ow)), np.zeros_like(x)
    for i in range(oh):
        for j in range(ow):
            taps = [
                (i * stride[0] + a * dilation[0] - pads[0][0],
                 j * stride[1] + b * dilation[1] - pads[1][0])
                for a in range(window[0])
                for b in range(window[1])
            ]  # fmt: skip
            inside = [0 <= r < h and 0 <= q < w for r, q in taps]
            if cfg.op == "max":
                vals = np.stack(
                    [x[:, :, r, q] if ok else np.full((n, c), -np.inf)
                     for (r, q), ok in zip(taps, inside)], -1
                )  # fmt: skip
                y[:, :, i, j] = vals.max(-1)
                first = vals.argmax(-1)
                for t, ((r, q), ok) in enumerate(zip(taps, inside)):
                    if ok:
                        dx[:, :, r, q] += np.where(first == t, g[:, :, i, j], 0.0)
                continue
            if include_pad:
                (top, bottom), (left, right) = pads
                count = sum(
                    -top <= r < h + bottom and -left <= q < w + right for r, q in taps
                )
            else:
                count = sum(inside)
            for (r, q), ok in zip(taps, inside):
                if ok:
                    y[:, :, i, j] += x[:, :, r, q] / count
                    dx[:, :, r, q] += g[:, :, i, j] / count
    return y, dx


def empty_window(cfg):
    """Whether some window holds no input position (only -inf padding)."""
    window, stride, dilation, pads, out = cfg.geometry()
    for axis in range(2):
        size = cfg.x_shape[2 + axis]
        for o in range(out[axis]):
            rows = [
                o * stride[axis] + k * dilation[axis] - pads[axis][0]
                for k in range(window[axis])
            ]
            if not any(0 <= r < size for r in rows):
                return True
    return False


def ceil_extra(cfg) -> tuple[bool, bool]:
    """Per axis, whether ceil_mode makes the output longer than floor rounding."""
    if not cfg.kw.get("ceil_mode"):
        return False, False
    floor = make_cfg(cfg.op, cfg.x_shape, **{**cfg.kw, "ceil_mode": False})
    pairs = zip(floor.geometry()[4], cfg.geometry()[4])
    return tuple(a != b for a, b in pairs)


# ------------------------------------------------------------- configurations

ints = st.integers
one_or_pair = lambda lo, hi: st.one_of(  # noqa: E731
    ints(lo, hi), st.tuples(ints(lo, hi), ints(lo, hi))
)


@st.composite
def pool_configs(draw, op, max_hw=9):
    window = draw(one_or_pair(1, 3))
    stride = draw(st.one_of(st.none(), one_or_pair(1, 3)))
    dilation = draw(one_or_pair(1, 2)) if op == "max" else 1
    eff = [d * (k - 1) + 1 for d, k in zip(as_pair(dilation), as_pair(window))]
    half = [e // 2 for e in eff]
    pairs_of_pairs = st.tuples(
        st.tuples(ints(0, half[0]), ints(0, half[0])),
        st.tuples(ints(0, half[1]), ints(0, half[1])),
    )
    paddings = st.one_of(
        ints(0, min(half)),
        st.tuples(ints(0, half[0]), ints(0, half[1])),
        pairs_of_pairs,
        st.sampled_from(["SAME", "VALID"]),
    )
    # Half are pairs of pairs, the one spelling that pads unevenly by choice.
    padding = draw(pairs_of_pairs if draw(st.booleans()) else paddings)
    hw = []
    for axis in range(2):
        if padding == "SAME":
            low = 1
        else:
            total = sum(pads_of(padding, (1, 1), (1, 1), (1, 1))[axis])
            low = max(1, eff[axis] - total)
        hw.append(draw(ints(low, max(low, max_hw))))
    kw = dict(window=window, stride=stride, padding=padding)
    kw["ceil_mode"] = draw(st.booleans())
    if op == "max":
        kw["dilation"] = dilation
    else:
        kw["count_include_pad"] = draw(st.booleans())
    n = draw(ints(1, 2))  # an empty batch checks nothing here: FEATURE_CFGS has it
    c = draw(ints(1, 3))
    if kw["ceil_mode"] and draw(st.integers(0, 3)):
        # Most sizes round the same either way, and then ceil_mode checks nothing:
        # in 3/4 of its draws, grow each axis until rounding up adds an output.
        for axis in range(2):
            for _ in range(3):
                if ceil_extra(make_cfg(op, (n, c, *hw), **kw))[axis]:
                    break
                hw[axis] += 1
    return make_cfg(op, (n, c, *hw), **kw)


def make_args(cfg, dtype, seed, integers=False):
    """x and a cotangent g of the output's shape. With `integers`, x holds
    integers in [-2, 2]: most max windows then hold ties."""
    rng = np.random.default_rng(seed)
    if integers:
        x = rng.integers(-2, 3, cfg.x_shape)
    else:
        x = rng.standard_normal(cfg.x_shape)
    g = rng.standard_normal(cfg.x_shape[:2] + cfg.geometry()[4])
    return jnp.asarray(x, dtype), jnp.asarray(g, dtype)


@partial(fast_jit, static_argnums=(0, 1))
def pool_both(op, kwargs, x, g):
    """Output and dx under a cotangent g, for both grad modes."""
    out = {}
    for mode in GRADS:
        y, vjp = jax.vjp(partial(OPS[op], grad=mode, **dict(kwargs)), x)
        out[mode] = (y, *vjp(g))
    return out


def check_sweep(cfg, dtype, seed, rtol, integers=False):
    """Custom against autodiff and both against the numpy loops. The forward is
    compared with autodiff's only for max pooling, whose custom forward is its
    own code (the argmax pass); mean pooling's custom forward is the reference."""
    x, g = make_args(cfg, dtype, seed, integers)
    res = pool_both(cfg.op, cfg.kwargs, x, g)
    (y, dx), (y_ref, dx_ref) = res["custom"], res["autodiff"]
    assert y.shape == g.shape and y.dtype == dx.dtype == dtype
    if cfg.op == "max":
        np.testing.assert_array_equal(y, y_ref)
    assert_close(dx, dx_ref, rtol)
    y_np, dx_np = np_pool(cfg, np.asarray(x, np.float64), np.asarray(g, np.float64))
    assert_close(y, y_np, max(rtol, 1e-12))
    assert_close(dx, dx_np, max(rtol, 1e-12))


# ------------------------------------------------------- custom vs autodiff sweeps


@st.composite
def sweep_cases(draw, op):
    """(cfg, seed, integers): a config, an input seed, and integer-valued inputs
    in half the cases, picked by a checksum of the case: a boolean drawn on its
    own comes out skewed, as hypothesis reuses and shrinks its choices."""
    cfg, seed = draw(pool_configs(op)), draw(ints(0, 2**32 - 1))
    return cfg, seed, zlib.crc32(repr((cfg, seed)).encode()) % 2 == 1


# The rare combinations, whatever hypothesis draws: stride > 1 with dilation > 1,
# asymmetric padding, ceil_mode adding an output row or column, ties.
SWEEP_EXAMPLES = {
    "max": [
        (make_cfg("max", (2, 2, 9, 7), window=(2, 3), stride=2, dilation=(2, 1),
                  padding=((1, 0), (0, 1)), ceil_mode=True), 1, True),
        (make_cfg("max", (1, 3, 7, 8), window=3, stride=2, dilation=2,
                  padding="SAME", ceil_mode=False), 2, True),
        (make_cfg("max", (2, 1, 8, 9), window=2, stride=(3, 2), dilation=(1, 2),
                  padding=((0, 1), (1, 1)), ceil_mode=True), 3, False),
    ],
    "avg": [
        (make_cfg("avg", (2, 2, 9, 7), window=(3, 2), stride=2,
                  padding=((1, 0), (1, 1)), ceil_mode=True,
                  count_include_pad=False), 1, True),
        (make_cfg("avg", (1, 2, 8, 8), window=3, stride=3, padding=(1, 0),
                  ceil_mode=True, count_include_pad=True), 2, False),
    ],
}  # fmt: skip


def check_case(case, dtype, rtol):
    cfg, seed, integers = case
    check_sweep(cfg, dtype, seed, rtol, integers)


def _sweep(op, count, dtype, rtol, examples=()):
    """A hypothesis sweep of `count` cases, the given examples included."""

    @settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=count - len(examples),
    )
    @given(case=sweep_cases(op))
    def test(case):
        check_case(case, dtype, rtol)

    for case in examples:
        test = example(case=case)(test)
    return test


test_max_custom_matches_autodiff_f64 = _sweep(
    "max", 100, jnp.float64, 1e-10, SWEEP_EXAMPLES["max"]
)
test_avg_custom_matches_autodiff_f64 = _sweep(
    "avg", 100, jnp.float64, 1e-10, SWEEP_EXAMPLES["avg"]
)
test_max_custom_matches_autodiff_f32 = _sweep("max", 15, jnp.float32, 1e-5)
test_avg_custom_matches_autodiff_f32 = _sweep("avg", 15, jnp.float32, 1e-5)
test_max_custom_matches_autodiff_f64_slow = pytest.mark.slow(
    _sweep("max", 1000, jnp.float64, 1e-10, SWEEP_EXAMPLES["max"])
)
test_avg_custom_matches_autodiff_f64_slow = pytest.mark.slow(
    _sweep("avg", 1000, jnp.float64, 1e-10, SWEEP_EXAMPLES["avg"])
)
test_max_custom_matches_autodiff_f32_slow = pytest.mark.slow(
    _sweep("max", 300, jnp.float32, 1e-5, SWEEP_EXAMPLES["max"])
)
test_avg_custom_matches_autodiff_f32_slow = pytest.mark.slow(
    _sweep("avg", 300, jnp.float32, 1e-5, SWEEP_EXAMPLES["avg"])
)


def has_tie(cfg, x) -> bool:
    """Whether some max window holds its maximum at two input positions."""
    window, stride, dilation, pads, (oh, ow) = cfg.geometry()
    h, w = cfg.x_shape[2:]
    x = np.asarray(x)
    for i in range(oh):
        for j in range(ow):
            rows = [
                i * stride[0] + a * dilation[0] - pads[0][0] for a in range(window[0])
            ]
            cols = [
                j * stride[1] + b * dilation[1] - pads[1][0] for b in range(window[1])
            ]
            taps = [
                x[:, :, r, q] for r in rows for q in cols if 0 <= r < h and 0 <= q < w
            ]
            if len(taps) > 1:
                taps = np.stack(taps)
                if np.any((taps == taps.max(axis=0)).sum(axis=0) > 1):
                    return True
    return False


def drawn_distribution(sweep, monkeypatch) -> dict:
    """The cases `sweep` (a hypothesis test of this module) checks, counted by
    feature (`helpers.cases_checked` records them)."""
    seen = cases_checked(__name__, sweep, monkeypatch)
    counts = {"cases": len(seen)}
    for cfg, seed, integers in seen:
        _, stride, dilation, pads, _ = cfg.geometry()
        features = {
            "empty batch": cfg.x_shape[0] == 0,
            "integer inputs": integers,
            "a tied max window": cfg.op == "max"
            and has_tie(cfg, make_args(cfg, np.float64, seed, integers)[0]),
            "ceil_mode adds output": any(ceil_extra(cfg)),
            "stride>1 with dilation>1 on one axis": any(
                s > 1 and d > 1 for s, d in zip(stride, dilation)
            ),
            "asymmetric padding": any(lo != hi for lo, hi in pads),
        }
        for name, present in features.items():
            counts[name] = counts.get(name, 0) + bool(present)
    return counts


@pytest.mark.parametrize("op", ["max", "avg"])
def test_sweep_distribution(op, monkeypatch):
    """What the f64 sweeps draw covers what they are for: no empty batches, ties in
    about half the max-pool cases, ceil_mode changing the output size, and each
    rare combination (shown with pytest -s)."""
    sweep = globals()[f"test_{op}_custom_matches_autodiff_f64"]
    counts = drawn_distribution(sweep, monkeypatch)
    print(f"{op}_pool2d f64 sweep: {counts}")
    assert counts["cases"] == 100 and counts["empty batch"] == 0, counts
    assert 40 <= counts["integer inputs"] <= 60, counts
    assert counts["ceil_mode adds output"] >= 10, counts
    assert counts["asymmetric padding"] >= 20, counts
    if op == "max":
        assert counts["a tied max window"] >= 20, counts
        assert counts["stride>1 with dilation>1 on one axis"] >= 10, counts


# Each named feature at least once, whatever hypothesis draws.
FEATURE_CFGS = [
    make_cfg("max", (0, 2, 5, 5), window=2),
    make_cfg("avg", (0, 2, 5, 5), window=3, stride=1, padding=1),
    make_cfg("max", (2, 2, 7, 6), window=(2, 3), stride=(2, 1), dilation=(2, 1),
             padding=((1, 0), (0, 1)), ceil_mode=True),
    make_cfg("max", (1, 2, 7, 8), window=3, stride=2, padding="SAME"),
    make_cfg("avg", (1, 2, 7, 8), window=3, stride=2, padding="SAME",
             count_include_pad=False),
    make_cfg("avg", (2, 1, 6, 7), window=(3, 2), stride=2, padding=((1, 0), (1, 1)),
             ceil_mode=True, count_include_pad=False),
    make_cfg("avg", (2, 1, 5, 5), window=2, stride=2, ceil_mode=True),
]  # fmt: skip


@pytest.mark.parametrize("cfg", FEATURE_CFGS)
@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-10), (jnp.float32, 1e-5)])
def test_feature_configs(cfg, dtype, rtol):
    check_sweep(cfg, dtype, 11, rtol)


# ----------------------------------------------------- float64 finite differences

FD_CFGS = [
    make_cfg("max", (2, 2, 5, 5), window=2, stride=1, padding=1),
    make_cfg("max", (1, 2, 7, 6), window=(2, 3), stride=(2, 1), dilation=(2, 1),
             padding=((1, 0), (0, 1)), ceil_mode=True),
    make_cfg("avg", (2, 2, 5, 6), window=3, stride=2, padding=1, ceil_mode=True),
    make_cfg("avg", (1, 2, 6, 5), window=(3, 2), stride=(1, 2),
             padding=((1, 0), (1, 1)), count_include_pad=False),
]  # fmt: skip


def distinct_values(shape, spacing, seed):
    """A random arrangement of evenly spaced values centred on 0: no two entries
    closer than `spacing`, so no max-pool near-ties."""
    size = int(np.prod(shape))
    order = np.random.default_rng(seed).permutation(size)
    return jnp.asarray((order - size / 2).reshape(shape) * spacing)


@pytest.mark.parametrize("cfg", FD_CFGS)
def test_finite_differences(cfg):
    # No two entries within 0.5: no near-ties for the central differences (step
    # 1e-4) to straddle.
    x = distinct_values(cfg.x_shape, 0.5, seed=12)
    f = jax.jit(partial(OPS[cfg.op], grad="custom", **cfg.kw))
    check_grads(f, (x,), order=2, modes=["rev"])


# ------------------------------------------------------------------ second order

HESS_CFGS = [
    make_cfg("max", (1, 2, 5, 5), window=2, stride=1, padding=1),
    make_cfg("max", (1, 1, 6, 6), window=2, stride=2, dilation=2, ceil_mode=True),
    make_cfg("avg", (1, 2, 5, 5), window=3, stride=2, padding=1,
             count_include_pad=False, ceil_mode=True),
]  # fmt: skip


@pytest.mark.parametrize("cfg", HESS_CFGS)
def test_second_order_matches_autodiff(cfg):
    x = distinct_values(cfg.x_shape, 0.1, seed=13)
    v = jnp.asarray(np.random.default_rng(14).standard_normal(cfg.x_shape))
    res = {}
    for mode in GRADS:

        def loss(x, mode=mode):
            return jnp.sum(jnp.tanh(OPS[cfg.op](x, grad=mode, **cfg.kw)) ** 2)

        hess = fast_jit(jax.hessian(loss))(x)
        revrev = fast_jit(jax.jacrev(jax.jacrev(loss)))(x)
        hvp = fast_jit(lambda x, v, loss=loss: jax.jvp(jax.grad(loss), (x,), (v,))[1])
        res[mode] = (hess, revrev, hvp(x, v))
        assert_close(hess, revrev, 1e-12)
        assert np.any(np.asarray(hess) != 0)
    for got, want in zip(res["custom"], res["autodiff"]):
        assert_close(got, want, 1e-10)


# -------------------------------------------------------------- hand-computed

G22 = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])


def vjp_both(f, x, g):
    """(mode, y[0, 0], dx[0, 0]) for each grad mode."""
    for mode in GRADS:
        y, dx = jax.jit(lambda x, g, mode=mode: _y_and_dx(partial(f, grad=mode), x, g))(
            x, g
        )
        yield mode, y[0, 0], dx[0, 0]


def _y_and_dx(f, x, g):
    y, vjp = jax.vjp(f, x)
    return y, vjp(g)[0]


def test_max_hand_4x4_arange():
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    for _, y, dx in vjp_both(partial(ops.max_pool2d, window=2), x, G22):
        np.testing.assert_array_equal(y, [[5.0, 7.0], [13.0, 15.0]])
        want = np.zeros((4, 4))
        want[1, 1], want[1, 3], want[3, 1], want[3, 3] = 1, 2, 3, 4
        np.testing.assert_array_equal(dx, want)


def test_max_hand_3x3_arange_overlapping():
    x = jnp.arange(9.0).reshape(1, 1, 3, 3)
    f = partial(ops.max_pool2d, window=2, stride=1)
    for _, y, dx in vjp_both(f, x, G22):
        np.testing.assert_array_equal(y, [[4.0, 5.0], [7.0, 8.0]])
        np.testing.assert_array_equal(dx, [[0, 0, 0], [0, 1, 2], [0, 3, 4]])
    # 3x3 windows, padding 1: the bottom-right input wins four windows.
    g = jnp.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    f = partial(ops.max_pool2d, window=3, stride=1, padding=1)
    for _, y, dx in vjp_both(f, x, g):
        np.testing.assert_array_equal(y, [[4, 5, 5], [7, 8, 8], [7, 8, 8]])
        want = [[0, 0, 0], [0, 1, 2 + 3], [0, 4 + 7, 5 + 6 + 8 + 9]]
        np.testing.assert_array_equal(dx, want)


def test_max_one_input_wins_every_window():
    x = jnp.array([[[[0.0, 1.0, 2.0], [3.0, 10.0, 5.0], [6.0, 7.0, 8.0]]]])
    for _, y, dx in vjp_both(partial(ops.max_pool2d, window=2, stride=1), x, G22):
        np.testing.assert_array_equal(y, [[10.0, 10.0], [10.0, 10.0]])
        np.testing.assert_array_equal(dx, [[0, 0, 0], [0, 10, 0], [0, 0, 0]])


def test_max_ties_go_to_first_in_row_major_window_order():
    # An all-equal window: the top-left position takes the whole delta.
    for _, y, dx in vjp_both(partial(ops.max_pool2d, window=2), jnp.ones((1, 1, 2, 2)),
                             jnp.full((1, 1, 1, 1), 7.0)):  # fmt: skip
        np.testing.assert_array_equal(y, [[1.0]])
        np.testing.assert_array_equal(dx, [[7.0, 0.0], [0.0, 0.0]])
    # Overlapping all-equal windows: each window's top-left position wins.
    f = partial(ops.max_pool2d, window=2, stride=1)
    for _, _, dx in vjp_both(f, jnp.zeros((1, 1, 3, 3)), G22):
        np.testing.assert_array_equal(dx, [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    # With padding every window covers all four equal inputs; the first real
    # position in window order, (0, 0), wins all of them.
    f = partial(ops.max_pool2d, window=3, stride=1, padding=1)
    for _, y, dx in vjp_both(f, jnp.ones((1, 1, 2, 2)), G22):
        np.testing.assert_array_equal(y, np.ones((2, 2)))
        np.testing.assert_array_equal(dx, [[10.0, 0.0], [0.0, 0.0]])
    # Ties in a dilated window: taps (0,0),(0,2),(2,0),(2,2) of a 3x3 input.
    x = jnp.array([[[[5.0, 9.0, 5.0], [9.0, 9.0, 9.0], [5.0, 9.0, 5.0]]]])
    f = partial(ops.max_pool2d, window=2, dilation=2)
    for _, y, dx in vjp_both(f, x, jnp.full((1, 1, 1, 1), 3.0)):
        np.testing.assert_array_equal(y, [[5.0]])
        np.testing.assert_array_equal(dx, [[3, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_max_nan_propagates_and_takes_the_delta():
    """A NaN wins its windows (as in PyTorch): forward NaN, its delta to the NaN."""
    x = jnp.array([[[[1.0, np.nan, 0.0], [3.0, 2.0, 5.0], [0.0, 1.0, 2.0]]]])
    f = jax.jit(partial(_y_and_dx, partial(ops.max_pool2d, window=2, stride=1)))
    y, dx = f(x, G22)
    np.testing.assert_array_equal(y[0, 0], [[np.nan, np.nan], [3.0, 5.0]])
    np.testing.assert_array_equal(dx[0, 0], [[0, 1 + 2, 0], [3, 0, 4], [0, 0, 0]])


def test_avg_hand_spreads_evenly():
    x = jnp.arange(9.0).reshape(1, 1, 3, 3)
    for _, y, dx in vjp_both(partial(ops.avg_pool2d, window=2, stride=1), x, G22):
        np.testing.assert_array_equal(y, [[2.0, 3.0], [5.0, 6.0]])
        want = np.array([[1, 3, 2], [4, 10, 6], [3, 7, 4]]) / 4
        np.testing.assert_array_equal(dx, want)


@pytest.mark.parametrize(
    "include, want_y, want_dx",
    [
        (True, [[0.25, 0.75, 0.5], [1.0, 2.5, 1.5], [0.75, 1.75, 1.0]], 1.0),
        # Divisors [[1, 2, 1], [2, 4, 2], [1, 2, 1]]: each input gets
        # 1/1 + 1/2 + 1/2 + 1/4 from its four windows.
        (False, [[1.0, 1.5, 2.0], [2.0, 2.5, 3.0], [3.0, 3.5, 4.0]], 2.25),
    ],
)
def test_avg_hand_count_include_pad(include, want_y, want_dx):
    x = jnp.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    f = partial(
        ops.avg_pool2d, window=2, stride=1, padding=1, count_include_pad=include
    )
    for _, y, dx in vjp_both(f, x, jnp.ones((1, 1, 3, 3))):
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(dx, np.full((2, 2), want_dx))


@pytest.mark.parametrize(
    "include, want_y, want_dx",
    [
        # Windows [pad, x0, x1], [x1, x2, x3], [x3, pad, ceil-extra]: the explicit
        # pad counts, the ceil_mode extra never does.
        (True, [1 / 3, 2.0, 1.5], [1 / 3, 2 / 3, 1 / 3, 1 / 3 + 1 / 2]),
        (False, [0.5, 2.0, 3.0], [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1.0]),
    ],
)
def test_avg_hand_ceil_mode_divisors(include, want_y, want_dx):
    x = jnp.arange(4.0).reshape(1, 1, 1, 4)
    f = partial(ops.avg_pool2d, window=(1, 3), stride=(1, 2), padding=(0, 1),
                ceil_mode=True, count_include_pad=include)  # fmt: skip
    for _, y, dx in vjp_both(f, x, jnp.ones((1, 1, 1, 3))):
        np.testing.assert_allclose(y, [want_y], rtol=1e-15)
        np.testing.assert_allclose(dx, [want_dx], rtol=1e-15)


def test_avg_hand_ceil_mode_without_padding():
    # [x0, x1], [x2, x3], [x4, ceil-extra]: the last window divides by 1.
    x = jnp.arange(5.0).reshape(1, 1, 1, 5)
    f = partial(ops.avg_pool2d, window=(1, 2), ceil_mode=True)
    for _, y, dx in vjp_both(f, x, jnp.array([[[[2.0, 4.0, 6.0]]]])):
        np.testing.assert_array_equal(y, [[0.5, 2.5, 4.0]])
        np.testing.assert_array_equal(dx, [[1.0, 1.0, 2.0, 2.0, 6.0]])


# --------------------------------------------------------------------- PyTorch

_TORCH_POOL = """
for i, c in enumerate(configs):
    x, g = t(f"x{i}", True), t(f"g{i}")
    if c["op"] == "max":
        y = F.max_pool2d(x, c["window"], c["stride"], c["padding"], c["dilation"],
                         ceil_mode=c["ceil_mode"])
    else:
        y = F.avg_pool2d(x, c["window"], c["stride"], c["padding"],
                         ceil_mode=c["ceil_mode"],
                         count_include_pad=c["count_include_pad"])
    y.backward(g)
    save(f"y{i}", y)
    save(f"dx{i}", x.grad)
"""


def torch_pool_configs(count, seed=14):
    """Configs PyTorch accepts (symmetric padding) and handles safely: torch 2.13
    corrupts its heap when a dilated max window lies wholly in the padding."""
    rng = np.random.default_rng(seed)
    cfgs = []
    while len(cfgs) < count:
        op = ["max", "avg"][len(cfgs) % 2]
        window = tuple(int(k) for k in rng.integers(1, 4, 2))
        stride = tuple(int(s) for s in rng.integers(1, 4, 2))
        dilation = tuple(int(d) for d in rng.integers(1, 3, 2)) if op == "max" else 1
        # PyTorch bounds the padding by half the raw window, not the dilated one.
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in window)
        kw = dict(window=window, stride=stride, padding=padding)
        kw["ceil_mode"] = bool(rng.integers(2))
        if op == "max":
            kw["dilation"] = dilation
        else:
            kw["count_include_pad"] = bool(rng.integers(2))
        hw = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        cfg = make_cfg(op, (int(rng.integers(1, 3)), 2, *hw), **kw)
        _, _, _, pads, out = cfg.geometry()
        if min(out) >= 1 and not empty_window(cfg):
            cfgs.append(cfg)
    return cfgs


@partial(fast_jit, static_argnums=0)
def pool_custom_many(cfgs, xs, gs):
    out = []
    for cfg, x, g in zip(cfgs, xs, gs):
        y, vjp = jax.vjp(partial(OPS[cfg.op], **cfg.kw), x)
        out.append((y, *vjp(g)))
    return out


def test_matches_torch(run_torch):
    cfgs = torch_pool_configs(40)
    # Ties too: small integers repeat in every window, and PyTorch also sends the
    # delta to the first maximum in window order.
    cfgs += [
        make_cfg("max", (2, 2, 6, 6), window=3, stride=1, padding=1, dilation=1,
                 ceil_mode=False),
        make_cfg("max", (2, 2, 7, 7), window=2, stride=2, padding=1, dilation=2,
                 ceil_mode=True),
    ]  # fmt: skip
    rng = np.random.default_rng(15)
    xs, gs = [], []
    for i, cfg in enumerate(cfgs):
        x, g = make_args(cfg, jnp.float64, 200 + i)
        if i >= len(cfgs) - 2:
            x = jnp.asarray(rng.integers(0, 2, cfg.x_shape), jnp.float64)
        xs.append(x)
        gs.append(g)
    ours = pool_custom_many(tuple(cfgs), xs, gs)
    arrays = {f"x{i}": np.asarray(x) for i, x in enumerate(xs)}
    arrays.update({f"g{i}": np.asarray(g) for i, g in enumerate(gs)})
    meta = []
    for cfg in cfgs:
        window, stride, dilation, pads, _ = cfg.geometry()
        meta.append(
            dict(
                op=cfg.op,
                window=window,
                stride=stride,
                dilation=dilation,
                padding=[pads[0][0], pads[1][0]],
                ceil_mode=cfg.kw["ceil_mode"],
                count_include_pad=cfg.kw.get("count_include_pad", True),
            )
        )
    theirs = run_torch(_TORCH_POOL, arrays, meta)
    for i, (cfg, (y, dx)) in enumerate(zip(cfgs, ours)):
        assert y.shape == theirs[f"y{i}"].shape, cfg
        assert_close(y, theirs[f"y{i}"], 1e-10)
        assert_close(dx, theirs[f"dx{i}"], 1e-10)


# ---------------------------------------------------------- jit, vmap, dtypes

JIT_CFGS = [
    make_cfg("max", (2, 3, 7, 6), window=(3, 2), stride=(2, 1), dilation=(1, 2),
             padding=((1, 0), (0, 1)), ceil_mode=True),
    make_cfg("max", (2, 3, 7, 6), window=3, stride=2, padding=1),
    make_cfg("avg", (2, 3, 7, 6), window=(3, 2), stride=(2, 1),
             padding=((1, 0), (0, 1)), ceil_mode=True, count_include_pad=False),
]  # fmt: skip


@pytest.mark.parametrize("mode", GRADS)
@pytest.mark.parametrize("cfg", [JIT_CFGS[0], JIT_CFGS[2]])
def test_jit_equals_eager(cfg, mode):
    x, g = make_args(cfg, jnp.float64, 16)
    f = partial(OPS[cfg.op], grad=mode, **cfg.kw)
    grad = jax.grad(lambda x: jnp.vdot(f(x), g))
    # XLA may turn the mean's division by constant counts into a multiplication
    # when it compiles a whole function, so allow an ulp or two.
    assert_close(jax.jit(f)(x), f(x), 1e-14)
    assert_close(jax.jit(grad)(x), grad(x), 1e-14)


@pytest.mark.parametrize("mode", GRADS)
@pytest.mark.parametrize("cfg", JIT_CFGS)
def test_vmap_equals_loop(cfg, mode):
    rng = np.random.default_rng(17)
    x5 = jnp.asarray(rng.standard_normal((3,) + cfg.x_shape))
    _, g = make_args(cfg, jnp.float64, 18)
    f = jax.jit(partial(OPS[cfg.op], grad=mode, **cfg.kw))
    grad = jax.jit(jax.grad(lambda x: jnp.vdot(f(x), g)))
    np.testing.assert_array_equal(jax.vmap(f)(x5), jnp.stack([f(x) for x in x5]))
    assert_close(jax.vmap(grad)(x5), jnp.stack([grad(x) for x in x5]), 1e-14)


@pytest.mark.parametrize("mode", GRADS)
@pytest.mark.parametrize("cfg", [JIT_CFGS[0], JIT_CFGS[2]])
@pytest.mark.parametrize(
    "dtype, rtol", [(jnp.float64, 1e-10), (jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)]
)
def test_dtypes(cfg, dtype, rtol, mode):
    """Forward and gradient in each dtype, against float32/64 on the same inputs."""
    x, g = make_args(cfg, dtype, 19)
    y_and_dx = jax.jit(partial(_y_and_dx, partial(OPS[cfg.op], grad=mode, **cfg.kw)))
    y, dx = y_and_dx(x, g)
    assert y.dtype == dx.dtype == dtype
    wide = jnp.float32 if dtype == jnp.bfloat16 else jnp.float64
    y_ref, dx_ref = y_and_dx(x.astype(wide), g.astype(wide))
    assert_close(y, y_ref, rtol)
    assert_close(dx, dx_ref, rtol)


# ------------------------------------------- fast (tiled) and general backward

# Windows that tile the input (stride = window, no dilation or padding), where
# the backward takes its fast path: square and not, with rows and columns left
# over by floor rounding, in both layouts.
TILED_CASES = [
    ((2, 3, 8, 8), 2, "NCHW"),
    ((2, 7, 9, 3), (2, 3), "NHWC"),
    ((1, 2, 7, 6), 3, "NCHW"),
]


def np_tiled_max(x, window):
    """Maxima, first-maximum flat indices `row * W + col` and the VJP under g, for
    windows that tile x `(N, C, H, W)`, by reshaping in numpy."""
    n, c, h, w = x.shape
    kh, kw = window
    oh, ow = h // kh, w // kw
    blocks = x[:, :, : oh * kh, : ow * kw].reshape(n, c, oh, kh, ow, kw)
    taps = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh, ow, kh * kw)
    first = taps.argmax(-1)  # numpy's argmax: the first maximum
    rows = np.arange(oh)[:, None] * kh + first // kw
    cols = np.arange(ow)[None, :] * kw + first % kw
    return taps.max(-1), rows * w + cols


@partial(fast_jit, static_argnums=(0, 1))
def both_backward_paths(window, layout, x, g):
    """Max pool's outputs and its input gradient under g, each way: the fast and
    general kernels on one saved index, the op's custom rule and autodiff."""
    cfg, _ = _windows.window_config("max_pool2d", x, window, None, 0, 1, False, layout)
    assert pool.tiles(cfg)
    y, index = pool.max_pool_argmax(x, cfg)

    def f(x, grad):
        return ops.max_pool2d(x, window, layout=layout, grad=grad)

    dx = {
        "fast": pool.tiled_input_grad(g, index, cfg),
        "general": pool.placed_input_grad(g, index, cfg),
        **{grad: jax.vjp(partial(f, grad=grad), x)[1](g)[0] for grad in GRADS},
    }
    with_indices = ops.max_pool2d(x, window, layout=layout, return_indices=True)
    return y, with_indices, dx


@pytest.mark.parametrize("shape, window, layout", TILED_CASES, ids=str)
@pytest.mark.parametrize("integers", [False, True], ids=["distinct", "ties"])
def test_tiled_and_general_backward_agree(shape, window, layout, integers):
    """The fast path equals the general one, and both equal autodiff; values and
    indices equal a numpy reference (ties: most windows hold repeated maxima)."""
    rng = np.random.default_rng(len(shape) + integers)
    x = rng.integers(-2, 3, shape) if integers else rng.standard_normal(shape)
    x = jnp.asarray(x, jnp.float64)
    out_shape = jax.eval_shape(partial(ops.max_pool2d, window=window, layout=layout), x)
    g = jnp.asarray(rng.standard_normal(out_shape.shape))
    y, (y_ops, indices), dx = both_backward_paths(window, layout, x, g)
    for name in ("general", "custom", "autodiff"):
        np.testing.assert_array_equal(dx["fast"], dx[name], err_msg=name)
    to_nchw = (lambda a: a) if layout == "NCHW" else (lambda a: a.transpose(0, 3, 1, 2))
    want_y, want_index = np_tiled_max(to_nchw(np.asarray(x)), as_pair(window))
    np.testing.assert_array_equal(to_nchw(np.asarray(y)), want_y)
    np.testing.assert_array_equal(to_nchw(np.asarray(y_ops)), want_y)
    np.testing.assert_array_equal(to_nchw(np.asarray(indices)), want_index)


def test_tiled_nan_takes_the_delta_on_both_paths():
    """The last NaN in window order wins (as in PyTorch), on either path."""
    x = jnp.array([[[[1.0, np.nan], [np.nan, 0.0]]]])
    cfg, _ = _windows.window_config("max_pool2d", x, 2, None, 0, 1, False)
    y, index = pool.max_pool_argmax(x, cfg)
    assert np.isnan(y).all() and int(index[0, 0, 0, 0]) == 2
    g = jnp.full((1, 1, 1, 1), 5.0)
    want = [[0.0, 0.0], [5.0, 0.0]]
    np.testing.assert_array_equal(pool.tiled_input_grad(g, index, cfg)[0, 0], want)
    np.testing.assert_array_equal(pool.placed_input_grad(g, index, cfg)[0, 0], want)


# ------------------------------------------------- what the custom rules save


def test_max_pool_saves_int8_indices_not_x():
    x = jnp.asarray(np.random.default_rng(20).standard_normal((2, 3, 8, 8)))
    cfg, _ = _windows.window_config("max_pool2d", x, 3, 2, 1, 1, False)
    y, res = pool._max_pool_fwd(x, cfg)
    (index,) = jax.tree_util.tree_leaves(res)
    assert index.dtype == jnp.int8 and index.shape == y.shape == (2, 3, 4, 4)
    # The winning tap, row-major in the window, picks out the forward's maximum.
    xp = np.pad(
        np.asarray(x), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf
    )
    kh, kw = np.divmod(np.asarray(index), 3)
    rows = np.arange(4)[:, None] * 2 + kh
    cols = np.arange(4)[None, :] * 2 + kw
    n, c = np.indices((2, 3))[..., None, None]
    np.testing.assert_array_equal(xp[n, c, rows, cols], y)
    # What jax.vjp keeps alive between the passes is that one int8 array.
    _, vjp = jax.vjp(partial(ops.max_pool2d, window=3, stride=2, padding=1), x)
    leaves = jax.tree_util.tree_leaves(vjp)
    assert [(a.dtype, a.shape) for a in leaves] == [(jnp.int8, y.shape)]


def test_max_pool_index_dtype_widens_past_127_taps():
    x = jax.ShapeDtypeStruct((1, 1, 12, 12), jnp.float32)
    cfg, _ = _windows.window_config("max_pool2d", x, 12, None, 0, 1, False)
    _, res = jax.eval_shape(lambda x: pool._max_pool_fwd(x, cfg), x)
    assert [a.dtype for a in jax.tree_util.tree_leaves(res)] == [jnp.int16]


def test_avg_pool_saves_nothing():
    x = jnp.ones((2, 3, 6, 6))
    _, vjp = jax.vjp(partial(ops.avg_pool2d, window=3, stride=2, padding=1), x)
    assert jax.tree_util.tree_leaves(vjp) == []


@pytest.mark.parametrize("cfg", JIT_CFGS + FD_CFGS)
def test_backward_has_no_scatter(cfg):
    x = jnp.ones(cfg.x_shape)
    f = partial(OPS[cfg.op], grad="custom", **cfg.kw)
    text = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(jnp.sin(f(x)))))(x))
    assert "select_and_scatter" not in text
    assert "scatter" not in text

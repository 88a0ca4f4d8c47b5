"""Tests for funcnn.ops.conv_transpose2d: the hand-written rule against jax autodiff
and PyTorch (float64, one subprocess per sweep), the adjoint identity with conv2d,
finite differences, second order, a hand-computed answer and the error messages."""

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

pytestmark = pytest.mark.usefixtures("release_compiled")


class Cfg(NamedTuple):
    x_shape: tuple  # (N, C_in, H, W), whatever the layout
    w_shape: tuple  # (C_in, C_out // groups, KH, KW)
    bias: bool
    integers: bool
    kwargs: tuple  # sorted (name, value) pairs, layout included

    @property
    def kw(self):
        return dict(self.kwargs)

    def pads(self):
        p = self.kw["padding"]
        if isinstance(p, int):
            return ((p, p), (p, p))
        if isinstance(p[0], int):
            return ((p[0], p[0]), (p[1], p[1]))
        return p

    def out_hw(self):
        """The output size by PyTorch's formula, worked out here."""
        kw = self.kw
        s, d = as_pair(kw["stride"]), as_pair(kw["dilation"])
        e = as_pair(kw["output_padding"])
        return tuple(
            (self.x_shape[2 + i] - 1) * s[i]
            - sum(self.pads()[i])
            + d[i] * (self.w_shape[2 + i] - 1)
            + e[i]
            + 1
            for i in range(2)
        )


def make_cfg(x_shape, w_shape, bias=True, integers=False, **kw):
    kw = {"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, **kw}
    kw = {"groups": 1, "layout": "NCHW", **kw}
    kwargs = tuple(sorted(kw.items()))
    return Cfg(tuple(x_shape), tuple(w_shape), bias, integers, kwargs)


@st.composite
def configs(draw):
    groups = draw(ints(1, 3))
    c_in = groups * draw(ints(1, max(1, 4 // groups)))
    c_out_g = draw(ints(1, max(1, 4 // groups)))
    kh, kw = draw(ints(1, 4)), draw(ints(1, 4))
    stride, dilation = draw(one_or_pair(1, 3)), draw(one_or_pair(1, 2))
    s, d = as_pair(stride), as_pair(dilation)
    extra = tuple(draw(ints(0, max(s[i], d[i]) - 1)) for i in range(2))
    padding = draw(
        st.one_of(
            ints(0, 2),
            st.tuples(ints(0, 2), ints(0, 2)),
            st.tuples(
                st.tuples(ints(0, 2), ints(0, 2)), st.tuples(ints(0, 2), ints(0, 2))
            ),
        )
    )
    cfg = make_cfg(
        (draw(st.sampled_from((1, 2))), c_in, draw(ints(1, 6)), draw(ints(1, 6))),
        (c_in, c_out_g, kh, kw),
        draw(st.booleans()),
        draw(st.booleans()),
        stride=stride,
        padding=padding,
        output_padding=extra if extra[0] != extra[1] else extra[0],
        dilation=dilation,
        groups=groups,
        layout=draw(st.sampled_from(LAYOUTS)),
    )
    assume(min(cfg.out_hw()) >= 1)
    return cfg


def make_args(cfg, seed):
    """(x, w, b, g) in float64, x and g in the config's layout."""
    rng = np.random.default_rng(seed)
    layout = cfg.kw["layout"]
    c_out = cfg.w_shape[1] * cfg.kw["groups"]
    x = draw_values(rng, cfg.x_shape, cfg.integers)
    w = draw_values(rng, cfg.w_shape, cfg.integers)
    b = rng.standard_normal(c_out) if cfg.bias else None
    g = rng.standard_normal((cfg.x_shape[0], c_out, *cfg.out_hw()))
    f64 = partial(jnp.asarray, dtype=jnp.float64)
    return (
        f64(to_layout(x, layout)),
        f64(w),
        None if b is None else f64(b),
        f64(to_layout(g, layout)),
    )


@partial(fast_jit, static_argnums=0)
def both_modes(kwargs, x, w, b, g):
    """Output and (dx, dw, db) under the cotangent g, for each grad mode."""
    out = {}
    for mode in GRADS:
        f = partial(ops.conv_transpose2d, grad=mode, **dict(kwargs))
        y, vjp = jax.vjp(f, x, w, b)
        out[mode] = (y, *vjp(g))
    return out


def check_config(cfg, seed):
    """Custom against autodiff; returns the arrays for the PyTorch comparison."""
    args = make_args(cfg, seed)
    res = both_modes(cfg.kwargs, *args)
    (y, *grads), (y_ref, *grads_ref) = res["custom"], res["autodiff"]
    layout = cfg.kw["layout"]
    assert to_nchw(y, layout).shape[2:] == cfg.out_hw()
    assert_close(y, y_ref, 1e-10)
    for got, want in zip(grads, grads_ref):
        if want is None:
            assert got is None and not cfg.bias
        else:
            assert_close(got, want, 1e-10)
    return [to_nchw(a, layout) for a in (args[0], args[3], y, grads[0])], args, grads


_TORCH = """
for i, c in enumerate(configs):
    x, w = t(f"x{i}", True), t(f"w{i}", True)
    b = t(f"b{i}", True) if c["bias"] else None
    y = F.conv_transpose2d(x, w, b, stride=c["stride"], padding=c["padding"],
                           output_padding=c["output_padding"], groups=c["groups"],
                           dilation=c["dilation"])
    (top, bottom), (left, right) = c["crop"]
    y = y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]
    y.backward(t(f"g{i}"))
    save(f"y{i}", y)
    save(f"dx{i}", x.grad)
    save(f"dw{i}", w.grad)
    if b is not None:
        save(f"db{i}", b.grad)
"""


def compare_with_torch(run_torch, records):
    """One PyTorch run for all the sweep's configs; asymmetric padding is PyTorch's
    unpadded output, cropped."""
    arrays, meta = {}, []
    for i, (cfg, (x, g, _, _), args, _) in enumerate(records):
        arrays.update({f"x{i}": x, f"g{i}": g, f"w{i}": np.asarray(args[1])})
        if cfg.bias:
            arrays[f"b{i}"] = np.asarray(args[2])
        (top, bottom), (left, right) = cfg.pads()
        symmetric = top == bottom and left == right
        meta.append(
            dict(
                bias=cfg.bias,
                stride=as_pair(cfg.kw["stride"]),
                padding=(top, left) if symmetric else (0, 0),
                crop=((0, 0), (0, 0)) if symmetric else cfg.pads(),
                output_padding=as_pair(cfg.kw["output_padding"]),
                groups=cfg.kw["groups"],
                dilation=as_pair(cfg.kw["dilation"]),
            )
        )
    theirs = run_torch(_TORCH, arrays, meta)
    for i, (cfg, (_, _, y, dx), _, grads) in enumerate(records):
        assert_close(y, theirs[f"y{i}"], 1e-10)
        assert_close(dx, theirs[f"dx{i}"], 1e-10)
        assert_close(grads[1], theirs[f"dw{i}"], 1e-10)
        if cfg.bias:
            assert_close(grads[2], theirs[f"db{i}"], 1e-10)


def _sweep(examples):
    def test(torch_or_none):  # noqa: F811 (the fixture)
        records = []

        @settings(derandomize=True, database=None, deadline=None, max_examples=examples)
        @given(cfg=configs(), seed=ints(0, 2**32 - 1))
        def sweep(cfg, seed):
            records.append((cfg, *check_config(cfg, seed)))

        sweep()
        assert len(records) >= examples
        if torch_or_none is None:
            pytest.skip("torch is not installed: custom == autodiff checked only")
        compare_with_torch(torch_or_none, records)

    return test


test_sweep = _sweep(40)
test_sweep_slow = pytest.mark.slow(_sweep(800))


# ------------------------------------------------------------- the rule's pieces


@pytest.mark.parametrize(
    "cfg",
    [
        make_cfg((2, 4, 3, 5), (4, 3, 3, 2), stride=2, padding=1, output_padding=1),
        make_cfg((1, 4, 4, 3), (4, 1, 2, 3), stride=(1, 3), dilation=2, groups=2,
                 output_padding=(1, 2), padding=((0, 2), (1, 0)), layout="NHWC"),
    ],
)  # fmt: skip
def test_adjoint_of_conv2d(cfg):
    """<conv_transpose2d(x, w), v> == <x, conv2d(v, w)>: the op is conv2d's input
    gradient, with output_padding the extra rows conv2d's stride leaves over."""
    x, w, _, v = make_args(cfg, 3)
    kw = cfg.kw
    y = ops.conv_transpose2d(x, w, **kw)
    # conv2d over the output has its high padding cut by output_padding (past
    # zero, that crops the output's last rows).
    pads, crop = [], []
    for (lo, hi), e in zip(cfg.pads(), as_pair(kw["output_padding"])):
        pads.append((lo, max(hi - e, 0)))
        crop.append(max(e - hi, 0))
    v_nchw = to_nchw(v, kw["layout"])
    v_nchw = v_nchw[:, :, : v_nchw.shape[2] - crop[0], : v_nchw.shape[3] - crop[1]]
    conv = ops.conv2d(
        jnp.asarray(to_layout(v_nchw, kw["layout"])),
        w,
        stride=kw["stride"],
        padding=pads,
        dilation=kw["dilation"],
        groups=kw["groups"],
        layout=kw["layout"],
    )
    assert conv.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(y, v), jnp.vdot(x, conv), rtol=1e-12)


def test_hand_computed_1d():
    """Each input value spreads over the output through the filter: x = [1, 2],
    w = [1, 10, 100], stride 2 gives [1, 10, 100 + 2, 20, 200]; padding 1 crops a
    column from each side, output_padding 1 then adds one back at the end."""
    x = jnp.array([[[[1.0, 2.0]]]])
    w = jnp.array([[[[1.0, 10.0, 100.0]]]])
    for mode in GRADS:
        f = partial(ops.conv_transpose2d, stride=2, grad=mode)
        np.testing.assert_array_equal(f(x, w)[0, 0, 0], [1, 10, 102, 20, 200])
        np.testing.assert_array_equal(f(x, w, padding=(0, 1))[0, 0, 0], [10, 102, 20])
        got = f(x, w, padding=(0, 1), output_padding=(0, 1))
        np.testing.assert_array_equal(got[0, 0, 0], [10, 102, 20, 200])
        # dX is conv2d of the deltas: g = [1, 0, 0, 0, 1] reads w at taps 0 and 2.
        g = jnp.array([[[[1.0, 0.0, 0.0, 0.0, 1.0]]]])
        _, vjp = jax.vjp(f, x, w)
        dx, dw = vjp(g)
        np.testing.assert_array_equal(dx[0, 0, 0], [1.0, 100.0])
        np.testing.assert_array_equal(dw[0, 0, 0], [1.0, 0.0, 2.0])


FD_CFGS = [
    make_cfg((2, 2, 3, 3), (2, 3, 3, 3), stride=2, padding=1, output_padding=1),
    make_cfg((1, 4, 2, 3), (4, 1, 2, 2), stride=(2, 1), dilation=(1, 2), groups=2,
             padding=((1, 0), (0, 1)), layout="NHWC"),
    make_cfg((1, 2, 3, 2), (2, 2, 1, 3), stride=1, dilation=3, output_padding=2),
]  # fmt: skip


@pytest.mark.parametrize("cfg", FD_CFGS)
def test_finite_differences(cfg):
    x, w, b, _ = make_args(cfg, 5)
    f = jax.jit(partial(ops.conv_transpose2d, **cfg.kw))
    check_grads(f, (x, w, b), order=1, modes=["rev"])


@pytest.mark.parametrize("cfg", FD_CFGS[:2])
def test_second_order_matches_autodiff(cfg):
    x, w, b, g = make_args(cfg, 6)
    rng = np.random.default_rng(7)
    tangents = [jnp.asarray(rng.standard_normal(a.shape)) for a in (x, w, b)]
    res = hvp_both(partial(ops.conv_transpose2d, **cfg.kw), (x, w, b), tangents, g)
    for got, want in zip(res["custom"], res["autodiff"]):
        assert np.any(np.asarray(want) != 0)
        assert_close(got, want, 1e-10)


def test_saves_input_and_filters_only():
    cfg = FD_CFGS[0]
    x, w, b, _ = make_args(cfg, 8)
    _, vjp = jax.vjp(partial(ops.conv_transpose2d, **cfg.kw), x, w, b)
    shapes = sorted(leaf.shape for leaf in jax.tree.leaves(vjp))
    assert shapes == sorted([x.shape, w.shape])


@pytest.mark.parametrize("mode", GRADS)
def test_float32_and_jit(mode):
    cfg = FD_CFGS[1]
    x, w, b, g = make_args(cfg, 9)
    f = partial(ops.conv_transpose2d, grad=mode, **cfg.kw)
    y32 = jax.jit(f)(*(a.astype(jnp.float32) for a in (x, w, b)))
    assert y32.dtype == jnp.float32
    assert_close(y32, f(x, w, b), 1e-5)


# ----------------------------------------------------------------------- errors

X = jnp.zeros((2, 4, 5, 5))
W = jnp.zeros((4, 3, 3, 3))

ERRORS = [
    (dict(stride=2, output_padding=2), ValueError,
     "conv_transpose2d: expected output_padding smaller than the stride (2) or the "
     "dilation (1) along H, got 2. Use output_padding < 2 along H."),
    (dict(stride=(1, 2), dilation=(2, 1), output_padding=(1, 2)), ValueError,
     "expected output_padding smaller than the stride (2) or the dilation (1) along W"),
    (dict(layout="NWHC"), ValueError,
     "conv_transpose2d: expected layout to be one of ('NCHW', 'NHWC'), got 'NWHC'."),
    (dict(padding="SAME"), TypeError,
     "conv_transpose2d: expected padding as an int, a pair (ph, pw) or a pair of "
     "pairs ((top, bottom), (left, right)), got 'SAME'."),
    (dict(padding=4), ValueError,
     "conv_transpose2d: expected a positive output size along H, got (5 - 1) * 1 - 4 "
     "- 4 + 3 + 0 = -1. Use less padding."),
    (dict(groups=3), ValueError,
     "conv_transpose2d: expected groups (=3) to divide C_in (=4)."),
    (dict(grad="manual"), ValueError,
     "conv_transpose2d: expected grad to be one of ('custom', 'autodiff', "
     "'feedback_alignment', 'sign_symmetry', 'usf', 'brsf', 'frsf', "
     "'direct_feedback_alignment', 'kolen_pollack')"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, err, message", ERRORS)
def test_errors(kwargs, err, message):
    for fn in (ops.conv_transpose2d, jax.jit(partial(ops.conv_transpose2d, **kwargs))):
        with pytest.raises(err, match=re.escape(message)):
            fn(X, W, **kwargs) if fn is ops.conv_transpose2d else fn(X, W)


def test_error_shapes():
    with pytest.raises(ValueError, match=re.escape(
        "conv_transpose2d: expected w.shape[0] == C_in = 4, got w of shape "
        "(3, 4, 3, 3) for x of shape (2, 4, 5, 5)."
    )):  # fmt: skip
        ops.conv_transpose2d(X, jnp.zeros((3, 4, 3, 3)))
    with pytest.raises(ValueError, match=re.escape(
        "conv_transpose2d: expected x of rank 4 (N, H, W, C_in), got shape (4, 5, 5)."
    )):  # fmt: skip
        ops.conv_transpose2d(X[0], W, layout="NHWC")
    with pytest.raises(ValueError, match=re.escape(
        "conv_transpose2d: expected b of shape (C_out,) = (3,), got (4,)."
    )):  # fmt: skip
        ops.conv_transpose2d(X, W, jnp.zeros(4))

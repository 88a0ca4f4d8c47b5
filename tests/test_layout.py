"""layout="NHWC" against layout="NCHW": every op and whole models give the same
values and gradients, up to the transposition, under both grad modes; filters and
all other parameters are the same arrays in both layouts."""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blocks import GRADS, distinct_values, to_layout, to_nchw
from helpers import assert_close, fast_jit
from hypothesis import given, settings
from hypothesis import strategies as st

import funcnn
from funcnn import ops

RNG = np.random.default_rng(0)


def normal(*shape):
    return jnp.asarray(RNG.standard_normal(shape))


# (id, op with layout and grad as keywords, x in NCHW, other array arguments)
OP_CASES = [
    ("conv2d", partial(ops.conv2d, stride=2, padding=1),
     normal(2, 8, 7, 6), (normal(4, 8, 3, 3), normal(4))),
    ("conv2d-patches", partial(ops.conv2d, padding="SAME", dilation=(1, 2)),
     normal(2, 3, 6, 7), (normal(5, 3, 3, 3), normal(5))),
    ("conv2d-groups", partial(ops.conv2d, stride=(2, 1), groups=2),
     normal(2, 4, 7, 6), (normal(6, 2, 2, 3), None)),
    ("conv_transpose2d", partial(ops.conv_transpose2d, stride=2, padding=1,
                                 output_padding=1, groups=2),
     normal(2, 4, 3, 4), (normal(4, 3, 3, 3), normal(6))),
    ("max_pool2d", partial(ops.max_pool2d, window=3, stride=2, padding=1,
                           dilation=(1, 2), ceil_mode=True),
     distinct_values((2, 3, 7, 8), 0.1, 1), ()),
    ("max_pool2d-indices", lambda x, **kw: ops.max_pool2d(
        x, (2, 3), stride=(2, 1), return_indices=True, **kw),
     distinct_values((2, 3, 6, 7), 0.1, 2), ()),
    ("avg_pool2d", partial(ops.avg_pool2d, window=3, stride=2, padding=1,
                           count_include_pad=False),
     normal(2, 3, 7, 8), ()),
    ("adaptive_avg_pool2d", partial(ops.adaptive_avg_pool2d, output_size=(3, 5)),
     normal(2, 3, 7, 8), ()),
    ("adaptive_max_pool2d", lambda x, **kw: ops.adaptive_max_pool2d(
        x, (3, 2), return_indices=True, **kw),
     distinct_values((2, 3, 7, 5), 0.1, 3), ()),
    ("upsample2d", lambda x, grad, **kw: ops.upsample2d(
        x, scale_factor=(2, 1.5), mode="bilinear", **kw),
     normal(2, 3, 4, 5), ()),
]  # fmt: skip


def _in_layout(a, layout):
    return a if a is None or a.ndim != 4 else jnp.asarray(to_layout(a, layout))


@pytest.mark.parametrize("mode", GRADS)
@pytest.mark.parametrize("name, op, x, rest", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_op_nhwc_equals_nchw(name, op, x, rest, mode):
    del name

    @fast_jit
    def both(x, rest, g):
        out = {}
        for layout in ("NCHW", "NHWC"):
            f = partial(op, layout=layout, grad=mode)
            args = (_in_layout(x, layout), *rest)  # filters are OIHW in both
            y, vjp = jax.vjp(f, *args)
            ys = y if isinstance(y, tuple) else (y,)
            cot = (jnp.asarray(to_layout(g, layout)),) + tuple(
                np.zeros(a.shape, jax.dtypes.float0) for a in ys[1:]
            )
            out[layout] = (ys, vjp(cot if isinstance(y, tuple) else cot[0]))
        return out

    shape = jax.eval_shape(partial(op, grad=mode), x, *rest)
    g = normal(*(shape[0] if isinstance(shape, tuple) else shape).shape)
    res = both(x, rest, g)
    (ys_c, grads_c), (ys_h, grads_h) = res["NCHW"], res["NHWC"]
    for a, b in zip(ys_c, ys_h):
        assert_close(to_nchw(b, "NHWC"), a, 1e-12)
    assert_close(to_nchw(grads_h[0], "NHWC"), grads_c[0], 1e-12)
    for a, b in zip(grads_c[1:], grads_h[1:]):  # filters and bias: same layout
        if a is not None:
            assert_close(b, a, 1e-12)


@pytest.mark.parametrize("mode", GRADS)
def test_unpool_nhwc_equals_nchw(mode):
    x = distinct_values((2, 3, 6, 7), 0.1, 4)
    y, index = jax.jit(partial(ops.max_pool2d, window=2, return_indices=True))(x)
    g = normal(2, 3, 6, 7)

    @fast_jit
    def both(y, index, g):
        out = {}
        for layout in ("NCHW", "NHWC"):
            f = partial(ops.max_unpool2d, window=2, output_size=(6, 7),
                        layout=layout, grad=mode)  # fmt: skip
            idx = to_layout(index, layout)
            u, vjp = jax.vjp(lambda y, f=f, idx=idx: f(y, idx), to_layout(y, layout))
            dy = vjp(to_layout(g, layout))[0]
            out[layout] = (to_nchw(u, layout), to_nchw(dy, layout))
        return out

    out = both(y, index, g)
    for a, b in zip(out["NCHW"], out["NHWC"]):
        np.testing.assert_array_equal(a, b)


@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    kw = dict(
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        padding=draw(st.sampled_from([0, 1, 2, (1, 0), "SAME"])),
        groups=groups,
    )
    pad = {0: (0, 0), 1: (1, 1), 2: (2, 2), (1, 0): (1, 0)}.get(kw["padding"], (9, 9))
    hw = tuple(
        draw(st.integers(max(1, kw["dilation"][i] * (k[i] - 1) + 1 - 2 * pad[i]), 8))
        for i in range(2)
    )
    return (2, c_in, *hw), (c_out, c_in // groups, *k), tuple(sorted(kw.items()))


@settings(derandomize=True, database=None, deadline=None, max_examples=50)
@given(cfg=conv_configs(), seed=st.integers(0, 2**32 - 1))
def test_conv2d_rule_nhwc_equals_nchw_sweep(cfg, seed):
    """The custom conv rule in both layouts, on drawn configs (the direct, the
    patches and the explicitly padded paths of conv2d_input_grad)."""
    x_shape, w_shape, kwargs = cfg
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), jnp.asarray(rng.standard_normal(w_shape))
    out = jax.eval_shape(partial(ops.conv2d, **dict(kwargs)), jnp.asarray(x), w)
    g = rng.standard_normal(out.shape)
    res = conv_both_layouts(kwargs, jnp.asarray(x), w, jnp.asarray(g))
    (y_c, dx_c, dw_c), (y_h, dx_h, dw_h) = res
    assert_close(to_nchw(y_h, "NHWC"), y_c, 1e-12)
    assert_close(to_nchw(dx_h, "NHWC"), dx_c, 1e-12)
    assert_close(dw_h, dw_c, 1e-12)


@partial(fast_jit, static_argnums=0)
def conv_both_layouts(kwargs, x, w, g):
    out = []
    for layout in ("NCHW", "NHWC"):
        f = partial(ops.conv2d, layout=layout, **dict(kwargs))
        y, vjp = jax.vjp(f, to_layout(x, layout), w)
        out.append((y, *vjp(to_layout(g, layout))))
    return out


# ----------------------------------------------------------------- whole models


def _encoder_decoder(layout):
    L = dict(layout=layout)
    return funcnn.serial(
        funcnn.Conv2D(6, 3, padding=1, **L),
        funcnn.BatchNorm(**L),
        funcnn.Relu(),
        funcnn.MaxPool2D(2, return_indices=True, **L),
        funcnn.parallel(
            funcnn.serial(funcnn.Conv2D(6, 3, padding=1, **L), funcnn.Relu()),
            funcnn.Identity(),
        ),
        funcnn.MaxUnpool2D(2, output_size=(9, 8), **L),
        funcnn.ConvTranspose2D(4, 3, stride=2, padding=1, output_padding=1, **L),
        funcnn.AdaptiveMaxPool2D((5, 4), **L),
        funcnn.Upsample2D(scale_factor=2, **L),
        funcnn.AdaptiveAvgPool2D(3, **L),
        funcnn.AvgPool2D(2, stride=1, **L),
        funcnn.Flatten(**L),
        funcnn.Dense(3),
    )


MODELS = [
    ("vgg_small", lambda layout: funcnn.vgg_small(5, dropout=0.0, layout=layout),
     (2, 3, 8, 8)),
    ("gap", lambda layout: funcnn.serial(
        funcnn.Conv2D(4, 3, layout=layout), funcnn.GlobalAvgPool2D(layout=layout),
        funcnn.Dense(2)), (2, 3, 6, 6)),
    ("encoder-decoder", _encoder_decoder, (2, 2, 9, 8)),
]  # fmt: skip


# Each model under one grad mode, both modes among them (to keep the compiles few).
MODEL_CASES = [(*m, mode) for m, mode in zip(MODELS, GRADS * 2)]


@pytest.mark.parametrize(
    "name, make, shape, mode", MODEL_CASES, ids=[f"{m[0]}-{m[3]}" for m in MODEL_CASES]
)
def test_model_nhwc_equals_nchw(name, make, shape, mode):
    """Same parameters (init in NCHW, used in both), same outputs, same gradients
    and the same BatchNorm statistics, in training mode, in float64."""
    del name
    x = normal(*shape)
    key = jax.random.key(1)
    nchw, nhwc = make("NCHW"), make("NHWC")
    out_c, params, state = nchw.init(key, (-1, *shape[1:]))
    out_h, params_h, state_h = nhwc.init(key, (-1, *to_layout(x, "NHWC").shape[1:]))
    assert out_h == out_c  # the classifiers' (N, classes)
    assert jax.tree.map(jnp.shape, params_h) == jax.tree.map(jnp.shape, params)
    params, state = jax.tree.map(lambda a: a.astype(jnp.float64), (params, state))
    g = normal(shape[0], out_c[1])

    def loss(params, model, x):
        y, new_state = model.apply(params, state, x, train=True, grad=mode)
        return jnp.vdot(jnp.tanh(y), g), (y, new_state)

    run = fast_jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, (y_c, st_c)), grads_c = run(params, nchw, x)
    (_, (y_h, st_h)), grads_h = run(params, nhwc, jnp.asarray(to_layout(x, "NHWC")))
    assert_close(y_h, y_c, 1e-12)
    # One scale for all gradients: a conv bias before BatchNorm has a gradient that
    # is zero but for rounding, in either layout.
    flat = [jnp.concatenate([jnp.zeros(0)] + [a.ravel() for a in jax.tree.leaves(t)])
            for t in (grads_c, st_c, grads_h, st_h)]  # fmt: skip
    assert_close(flat[2], flat[0], 1e-12)
    assert_close(flat[3], flat[1], 1e-12)


def test_unknown_layout_is_rejected_everywhere():
    x = jnp.zeros((1, 2, 4, 4))
    message = "expected layout to be one of ('NCHW', 'NHWC'), got 'NWHC'."
    calls = [
        ("conv2d", lambda: ops.conv2d(x, jnp.zeros((1, 2, 1, 1)), layout="NWHC")),
        ("max_pool2d", lambda: ops.max_pool2d(x, 2, layout="NWHC")),
        ("avg_pool2d", lambda: ops.avg_pool2d(x, 2, layout="NWHC")),
        ("upsample2d", lambda: ops.upsample2d(x, size=2, layout="NWHC")),
        ("Conv2D", lambda: funcnn.Conv2D(2, 1, layout="NWHC")),
        ("ConvTranspose2D", lambda: funcnn.ConvTranspose2D(2, 1, layout="NWHC")),
        ("MaxPool2D", lambda: funcnn.MaxPool2D(2, layout="NWHC")),
        ("AvgPool2D", lambda: funcnn.AvgPool2D(2, layout="NWHC")),
        ("AdaptiveAvgPool2D", lambda: funcnn.AdaptiveAvgPool2D(2, layout="NWHC")),
        ("AdaptiveMaxPool2D", lambda: funcnn.AdaptiveMaxPool2D(2, layout="NWHC")),
        ("GlobalAvgPool2D", lambda: funcnn.GlobalAvgPool2D(layout="NWHC")),
        ("MaxUnpool2D", lambda: funcnn.MaxUnpool2D(2, layout="NWHC")),
        ("Upsample2D", lambda: funcnn.Upsample2D(size=2, layout="NWHC")),
        ("BatchNorm", lambda: funcnn.BatchNorm(layout="NWHC")),
        ("Flatten", lambda: funcnn.Flatten(layout="NWHC")),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=re.escape(f"{name}: {message}")):
            call()

"""Tests for the building-block layers (ConvTranspose2D, the adaptive pools,
MaxPool2D with indices and MaxUnpool2D, Upsample2D) and for layout= on every
layer: shape agreement between init and apply in both layouts, values against the
ops and numpy, an encoder-decoder with unpooling, and the error messages."""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blocks import GRADS, LAYOUTS, to_layout
from helpers import assert_close, fast_jit

import funcnn
from funcnn import (
    AdaptiveAvgPool2D,
    AdaptiveMaxPool2D,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    MaxPool2D,
    MaxUnpool2D,
    Relu,
    Upsample2D,
    ops,
    parallel,
    serial,
)

KEY = jax.random.key(0)
B = -1  # the batch size in shapes given to init


def rand(shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def shape_in(layout, shape):
    """An `(N, C, H, W)` shape in `layout`."""
    return shape if layout == "NCHW" else (shape[0], *shape[2:], shape[1])


def shapes_of(tree):
    if isinstance(tree, tuple):
        return tuple(shapes_of(t) for t in tree)
    return tuple(tree.shape)


def with_batch(shapes, n):
    if isinstance(shapes[0], tuple):
        return tuple(with_batch(s, n) for s in shapes)
    return (n, *shapes[1:])


def encoder_decoder(layout="NCHW", out_hw=None):
    """The README's example: unpooling with the pool's indices, carried past the
    middle layers by parallel(..., Identity())."""
    L = dict(layout=layout)
    return serial(
        Conv2D(8, 3, padding=1, **L), Relu(),
        MaxPool2D(2, return_indices=True, **L),            # -> (y, indices)
        parallel(serial(Conv2D(8, 3, padding=1, **L), Relu()), Identity()),
        MaxUnpool2D(2, output_size=out_hw, **L),           # -> (N, 8, H, W)
        Conv2D(1, 3, padding=1, **L),
    )  # fmt: skip


def layer_cases():
    cases = []
    for layout in LAYOUTS:
        L = dict(layout=layout)

        def s(*shape, layout=layout):
            return shape_in(layout, shape)

        cases += [
            (f"conv-{layout}", Conv2D(4, 3, stride=2, padding=1, **L), s(B, 3, 7, 6)),
            (f"convT-{layout}", ConvTranspose2D(4, 3, stride=2, padding=1,
                                                output_padding=1, **L), s(B, 3, 4, 5)),
            (f"convT-groups-{layout}", ConvTranspose2D(6, (2, 3), stride=(1, 2),
                                                       groups=3, dilation=2, **L),
             s(B, 3, 4, 5)),
            (f"maxpool-{layout}", MaxPool2D(3, stride=2, padding=1, **L),
             s(B, 3, 7, 6)),
            (f"maxpool-idx-{layout}", MaxPool2D(2, return_indices=True, **L),
             s(B, 3, 7, 6)),
            (f"avgpool-{layout}", AvgPool2D(2, ceil_mode=True, **L), s(B, 3, 7, 6)),
            (f"gap-{layout}", GlobalAvgPool2D(**L), s(B, 3, 7, 6)),
            (f"adaptive-avg-{layout}", AdaptiveAvgPool2D((3, None), **L),
             s(B, 3, 7, 6)),
            (f"adaptive-max-{layout}", AdaptiveMaxPool2D(4, **L), s(B, 3, 7, 6)),
            (f"adaptive-max-idx-{layout}",
             AdaptiveMaxPool2D(2, return_indices=True, **L), s(B, 3, 7, 6)),
            (f"unpool-{layout}", MaxUnpool2D(2, stride=2, **L),
             (s(B, 3, 3, 4), s(B, 3, 3, 4))),
            (f"upsample-{layout}", Upsample2D(scale_factor=(2, 1.5), **L),
             s(B, 3, 3, 4)),
            (f"upsample-bilinear-{layout}",
             Upsample2D(size=(5, 7), mode="bilinear", align_corners=True, **L),
             s(B, 3, 3, 4)),
            (f"batchnorm-{layout}", BatchNorm(**L), s(B, 3, 4, 4)),
            (f"flatten-{layout}", Flatten(**L), s(B, 3, 4, 5)),
        ]  # fmt: skip
    return cases


CASES = layer_cases()


def inputs_for(shapes, n, seed=0):
    if isinstance(shapes[0], tuple):  # (values, indices) of a pool
        values = rand(with_batch(shapes[0], n), seed)
        return values, jnp.zeros(with_batch(shapes[1], n), jnp.int32)
    return rand(with_batch(shapes, n), seed)


@pytest.mark.parametrize("name, layer, shape", CASES, ids=[c[0] for c in CASES])
def test_shape_agreement(name, layer, shape):
    """The shape init predicts is the shape apply returns, in both layouts."""
    del name
    out_shape, params, state = layer.init(KEY, shape)
    y, _ = jax.jit(lambda p, s, x: layer.apply(p, s, x))(
        params, state, inputs_for(shape, 2)
    )
    assert shapes_of(y) == with_batch(out_shape, 2)


def test_conv_transpose_layer_matches_op_and_parameters():
    layer = ConvTranspose2D(6, (3, 2), stride=2, padding=1, groups=2, layout="NHWC")
    out, params, _ = layer.init(KEY, (B, 5, 4, 4))
    assert params["w"].shape == (4, 3, 3, 2) and params["b"].shape == (6,)
    assert out == (B, 9, 6, 6)  # (5-1)*2 - 2 + 3 rows, (4-1)*2 - 2 + 2 columns
    # He normal over the inputs that reach one output: 64 * ceil(3/2) * ceil(3/2).
    big = ConvTranspose2D(64, 3, stride=2).init(KEY, (B, 64, 4, 4))[1]["w"]
    np.testing.assert_allclose(np.std(np.asarray(big)), np.sqrt(2 / 256), rtol=0.05)
    x = rand((2, 5, 4, 4), 1)
    y, _ = layer.apply(params, {}, x)
    want = ops.conv_transpose2d(x, params["w"], params["b"], stride=2, padding=1,
                                groups=2, layout="NHWC")  # fmt: skip
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flatten_keeps_channels_first_order(layout):
    """Flatten(layout="NHWC") of an NHWC array is Flatten() of its NCHW transpose,
    so a Dense after it keeps its parameters."""
    x = rand((2, 3, 4, 5), 2)
    flat, _ = Flatten(layout=layout).apply({}, {}, jnp.asarray(to_layout(x, layout)))
    np.testing.assert_array_equal(flat, np.asarray(x).reshape(2, -1))


def test_batchnorm_nhwc_matches_numpy():
    x = rand((4, 5, 3, 2), 3, jnp.float64)  # (N, H, W, C) with C = 2
    layer = BatchNorm(layout="NHWC", dtype=jnp.float64)
    _, params, state = layer.init(KEY, (B, 5, 3, 2))
    assert params["scale"].shape == state.mean.shape == (2,)
    y, new = layer.apply(params, state, x, train=True)
    xn = np.asarray(x)
    mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
    assert_close(y, (xn - mean) / np.sqrt(var + 1e-5), 1e-10)
    assert_close(new.mean, 0.1 * mean, 1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encoder_decoder_with_unpooling(layout):
    """The pool's indices skip the middle layers; unpooling puts the decoded
    values back where the maxima were, and grad="custom" agrees with autodiff
    through the whole model."""
    model = encoder_decoder(layout)
    x = rand(shape_in(layout, (2, 2, 8, 8)), 4)
    out, params, state = model.init(KEY, (B, *x.shape[1:]))
    assert out == shape_in(layout, (B, 1, 8, 8))
    g = rand((2, *out[1:]), 5)

    def loss(params, grad):
        y, _ = model.apply(params, state, x, grad=grad)
        return jnp.vdot(y, g)

    if layout == "NCHW":  # and NHWC == NCHW in tests/test_layout.py
        run = fast_jit(jax.grad(loss), static_argnums=1)
        grads = {mode: run(params, mode) for mode in GRADS}
        for a, b in zip(*(jax.tree.leaves(grads[m]) for m in GRADS)):
            assert_close(a, b, 1e-5)

    # The unpooled activations, seen through a hook: each 2x2 block holds at most
    # one nonzero, at the position of its pool's maximum.
    @fast_jit
    def inner_values(params, x):
        seen = {}

        def hook(path, layer, call, x):
            y, new_state = call(x)
            seen["/".join(path)] = (x, y)
            return y, new_state

        model.apply(params, state, x, hook=hook)
        return seen["02_maxpool"][1][1], seen["04_maxunpool"]

    index, ((values, _), unpooled) = inner_values(params, x)
    u = np.asarray(unpooled)
    u = u if layout == "NCHW" else np.transpose(u, (0, 3, 1, 2))
    blocks = u.reshape(2, 8, 4, 2, 4, 2)
    assert ((blocks != 0).sum(axis=(3, 5)) <= 1).all()
    want = ops.max_unpool2d(values, index, 2, layout=layout)
    np.testing.assert_array_equal(unpooled, want)


def test_grad_mapping_reaches_the_new_layers():
    """A path-scoped grad= picks each new layer's rule by its path."""
    model = serial(
        ConvTranspose2D(3, 2, stride=2),
        AdaptiveMaxPool2D(3),
        MaxPool2D(2, return_indices=True, ceil_mode=True),
        MaxUnpool2D(2, output_size=(3, 3)),
        Flatten(),
        Dense(2),
    )
    x = rand((2, 2, 3, 3), 6)
    _, params, state = model.init(KEY, (B, 2, 3, 3))
    grads = {}
    for name, grad in [
        ("custom", "custom"),
        ("mixed", {"00_convtranspose": "autodiff", "03_maxunpool": "autodiff",
                   "*": "custom"}),
    ]:  # fmt: skip
        f = jax.grad(lambda p, grad=grad: model.apply(p, state, x, grad=grad)[0].sum())
        grads[name] = jax.jit(f)(params)
    for a, b in zip(jax.tree.leaves(grads["custom"]), jax.tree.leaves(grads["mixed"])):
        assert_close(a, b, 1e-5)
    # The mapping decides: the op sees "autodiff" under that path.
    text = str(jax.make_jaxpr(partial(model.apply, grad={"*": "autodiff"}))(
        params, state, x))  # fmt: skip
    assert "custom_vjp" not in text
    assert "custom_vjp" in str(jax.make_jaxpr(model.apply)(params, state, x))


LAYER_ERRORS = [
    (lambda: MaxUnpool2D(2).init(KEY, (B, 3, 4, 4)), ValueError,
     "MaxUnpool2D: expected the input shapes (values, indices) of a MaxPool2D(..., "
     "return_indices=True), got (-1, 3, 4, 4)."),
    (lambda: MaxUnpool2D(2).apply({}, {}, jnp.ones((1, 1, 2, 2))), ValueError,
     "MaxUnpool2D: expected the pair (values, indices) from a MaxPool2D(..., "
     "return_indices=True), got ArrayImpl."),
    (lambda: MaxUnpool2D(2).init(KEY, ((B, 3, 4, 4), (B, 3, 4, 3))), ValueError,
     "max_unpool2d: expected indices of y's shape (1, 3, 4, 4), got (1, 3, 4, 3)."),
    (lambda: ConvTranspose2D(4, 3, groups=2).init(KEY, (B, 3, 4, 4)), ValueError,
     "ConvTranspose2D: expected groups (=2) to divide C_in (=3) and out_channels "
     "(=4)."),
    (lambda: ConvTranspose2D(4, 3, stride=2, output_padding=2).init(KEY, (B, 2, 4, 4)),
     ValueError, "conv_transpose2d: expected output_padding smaller than the stride "
     "(2) or the dilation (1) along H, got 2."),
    (lambda: ConvTranspose2D(0, 3), ValueError,
     "ConvTranspose2D: expected out_channels to be a positive int, got 0."),
    (lambda: Conv2D(2, 3, layout="NHWC").init(KEY, (B, 3, 4)), ValueError,
     "Conv2D: expected an input shape of rank 4 (N, H, W, C_in), got (-1, 3, 4)."),
    (lambda: AdaptiveAvgPool2D(0).init(KEY, (B, 3, 4, 4)), ValueError,
     "adaptive_avg_pool2d: expected output_size >= 1 on each axis, got 0."),
    (lambda: GlobalAvgPool2D(layout="NHWC").init(KEY, (B, 4, 4)), ValueError,
     "GlobalAvgPool2D: expected an input shape of rank 4 (N, H, W, C), got "
     "(-1, 4, 4)."),
    (lambda: BatchNorm(layout="NHWC").init(KEY, (B, 4, 4)), ValueError,
     "BatchNorm: expected an input shape (N, C) or (N, H, W, C), got (-1, 4, 4)."),
    (lambda: Upsample2D(size=2, mode="area"), ValueError,
     "Upsample2D: expected mode to be one of ('nearest', 'bilinear'), got 'area'."),
    (lambda: Upsample2D(), ValueError,
     "Upsample2D: expected exactly one of size and scale_factor, got size=None and "
     "scale_factor=None."),
]  # fmt: skip


@pytest.mark.parametrize(
    "make, err, message", LAYER_ERRORS, ids=[m[2][:40] for m in LAYER_ERRORS]
)
def test_layer_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()


def test_public_names():
    for name in ("ConvTranspose2D", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D",
                 "MaxUnpool2D", "Upsample2D", "conv_transpose2d",
                 "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_unpool2d",
                 "upsample2d"):  # fmt: skip
        assert getattr(funcnn, name) is getattr(
            funcnn.nn if name[0].isupper() else funcnn.ops, name
        )

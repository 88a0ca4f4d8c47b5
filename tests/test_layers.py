"""Tests for funcnn layers, combinators and models: shape agreement between init and
apply, values against numpy (and PyTorch for BatchNorm), grad="custom" against
grad="autodiff" through whole models, and the layers' error messages."""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fast_jit

import funcnn
from funcnn import (
    Add,
    AvgPool2D,
    BatchNorm,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    FanOut,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    LeakyRelu,
    MaxPool2D,
    Relu,
    Sigmoid,
    Softmax,
    Split,
    Tanh,
    branches,
    ops,
    parallel,
    residual,
    serial,
)

KEY = jax.random.key(0)


def rand(shape, seed=0, dtype=jnp.float32, loc=0.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape) + loc, dtype)


def is_shape(s):
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def with_batch(shape_tree, n):
    """Put batch size n into every shape of a (nested tuple of) shape(s)."""
    if is_shape(shape_tree):
        return (n,) + shape_tree[1:]
    return tuple(with_batch(s, n) for s in shape_tree)


def inputs_for(shape_tree, seed=0):
    if is_shape(shape_tree):
        return rand(shape_tree, seed)
    return tuple(inputs_for(s, seed + i) for i, s in enumerate(shape_tree))


def shapes_of(tree):
    if isinstance(tree, tuple):
        return tuple(shapes_of(t) for t in tree)
    return tuple(tree.shape)


def assert_tree_close(got, want, rtol):
    """Leaf by leaf: max |got - want| <= rtol * max |want|."""
    got_leaves, tree = jax.tree_util.tree_flatten(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert tree == want_tree
    for a, b in zip(got_leaves, want_leaves):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = np.max(np.abs(b), initial=0.0)
        assert np.max(np.abs(a - b), initial=0.0) <= rtol * scale + 1e-30


# ------------------------------------------------------------ shape agreement


def abstract_init(layer, input_shape):
    """layer.init traced abstractly: the predicted shape, and params and state as
    ShapeDtypeStructs (no random numbers drawn, nothing compiled)."""
    box = {}

    def init(key):
        box["shape"], params, state = layer.init(key, input_shape)
        return params, state

    params, state = jax.eval_shape(init, KEY)
    return box["shape"], params, state


def jit_init(layer, input_shape):
    """layer.init with its random draws compiled together, not one by one."""
    shape = abstract_init(layer, input_shape)[0]
    params, state = jax.jit(lambda key: layer.init(key, input_shape)[1:])(KEY)
    return shape, params, state


B = -1  # the batch placeholder init accepts

LAYERS = [
    ("conv", Conv2D(4, 3, padding=1), (B, 3, 8, 8)),
    ("conv-grouped", Conv2D(6, (3, 2), stride=2, dilation=(1, 2), groups=3,
                            use_bias=False), (B, 3, 9, 9)),
    ("conv-same", Conv2D(2, 4, stride=3, padding="SAME"), (B, 1, 7, 5)),
    ("maxpool", MaxPool2D(2), (B, 3, 7, 6)),
    ("maxpool-full", MaxPool2D((3, 2), stride=(2, 1), padding=((1, 0), (0, 1)),
                               dilation=(1, 2), ceil_mode=True), (B, 2, 7, 6)),
    ("avgpool", AvgPool2D(3, stride=2, padding=1, ceil_mode=True,
                          count_include_pad=False), (B, 3, 8, 7)),
    ("gap", GlobalAvgPool2D(), (B, 3, 7, 6)),
    ("dense", Dense(5), (B, 12)),
    ("flatten", Flatten(), (B, 3, 4, 5)),
    ("relu", Relu(), (B, 7)),
    ("sigmoid", Sigmoid(), (B, 2, 3, 3)),
    ("tanh", Tanh(), (B, 7)),
    ("leaky_relu", LeakyRelu(0.2), (B, 7)),
    ("softmax", Softmax(), (B, 7)),
    ("batchnorm-4d", BatchNorm(), (B, 3, 4, 4)),
    ("batchnorm-2d", BatchNorm(), (B, 5)),
    ("dropout", Dropout(0.3), (B, 3, 4, 4)),
    ("concat", Concat(), ((B, 2, 4, 4), (B, 3, 4, 4))),
    ("concat-last", Concat(axis=3), ((B, 2, 4, 1), (B, 2, 4, 3))),
    ("split", Split(3), (B, 6, 4, 4)),
    ("split-sizes", Split([1, 2]), (B, 3, 4, 4)),
    ("fanout", FanOut(3), (B, 2, 4, 4)),
    ("add", Add(), ((B, 2, 4, 4), (B, 2, 4, 4))),
    ("identity", Identity(), (B, 2, 4, 4)),
    ("serial", serial(Conv2D(4, 3), Relu(), MaxPool2D(2), Flatten(), Dense(3)),
     (B, 2, 8, 8)),
    ("parallel", parallel(Conv2D(2, 1), Identity()), ((B, 3, 4, 4), (B, 5))),
    ("branches", serial(branches(Conv2D(2, 3, padding=1),
                                 MaxPool2D(3, stride=1, padding=1)), Concat()),
     (B, 3, 6, 6)),
    ("residual", residual(Conv2D(3, 3, padding=1), Relu()), (B, 3, 5, 5)),
    ("residual-shortcut", residual(Conv2D(4, 3, stride=2, padding=1),
                                   shortcut=Conv2D(4, 1, stride=2)), (B, 3, 6, 6)),
    ("lenet-8x8", funcnn.lenet(input_hw=(8, 8)), (B, 1, 8, 8)),
    ("lenet-28x28", funcnn.lenet(), (B, 1, 28, 28)),
    ("vgg_small", funcnn.vgg_small(), (B, 3, 8, 8)),
]  # fmt: skip


@pytest.mark.parametrize(
    "layer, input_shape", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS]
)
def test_shape_agreement(layer, input_shape):
    predicted, params, state = abstract_init(layer, input_shape)
    predicted2, params2, _ = abstract_init(layer, with_batch(input_shape, 2))
    assert predicted2 == with_batch(predicted, 2)
    assert predicted == with_batch(predicted2, B)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(params2)
    x = inputs_for(with_batch(input_shape, 2))
    out = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x)[0], params, state, x)
    assert shapes_of(out) == predicted2


# -------------------------------------------------------------------- values


def test_dense_matches_numpy():
    layer = Dense(5)
    _, params, state = layer.init(KEY, (B, 12))
    assert params["w"].shape == (5, 12) and params["b"].shape == (5,)
    params = {"w": params["w"], "b": rand((5,), 1)}
    x = rand((3, 12), 2)
    y, new_state = layer.apply(params, state, x)
    want = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64).T
    np.testing.assert_allclose(y, want + np.asarray(params["b"]), rtol=1e-5, atol=1e-5)
    assert new_state == state == {}
    _, params, _ = Dense(5, use_bias=False).init(KEY, (B, 12))
    assert set(params) == {"w"}


def test_conv_layer_matches_op_and_init_scale():
    layer = Conv2D(64, 3, stride=2, padding=1, groups=2)
    _, params, state = layer.init(KEY, (B, 16, 8, 8))
    w = params["w"]
    assert w.shape == (64, 8, 3, 3) and w.dtype == jnp.float32
    np.testing.assert_array_equal(params["b"], np.zeros(64))
    # He initialisation: std sqrt(2 / fan_in), fan_in = 8 * 3 * 3.
    assert abs(float(jnp.std(w)) / np.sqrt(2 / 72) - 1) < 0.05
    x = rand((2, 16, 8, 8), 3)
    y, _ = layer.apply(params, state, x)
    want = ops.conv2d(x, w, params["b"], stride=2, padding=1, groups=2)
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize(
    "layer, fn",
    [
        (MaxPool2D(3, stride=2, padding=1), partial(ops.max_pool2d, window=3, stride=2,
                                                    padding=1)),
        (AvgPool2D(2, count_include_pad=False, padding=1),
         partial(ops.avg_pool2d, window=2, padding=1, count_include_pad=False)),
    ],
)  # fmt: skip
def test_pool_layers_match_ops(layer, fn):
    _, params, state = layer.init(KEY, (B, 3, 7, 7))
    x = rand((2, 3, 7, 7), 4)
    np.testing.assert_array_equal(layer.apply(params, state, x)[0], fn(x))


def test_global_avg_pool_matches_numpy():
    x = rand((2, 3, 5, 4), 5, jnp.float64)
    y, _ = GlobalAvgPool2D().apply({}, {}, x)
    np.testing.assert_allclose(y, np.asarray(x).mean(axis=(2, 3)), rtol=1e-14)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize(
    "layer, fn",
    [
        (Relu(), lambda x: np.maximum(x, 0)),
        (Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (Tanh(), np.tanh),
        (LeakyRelu(), lambda x: np.where(x > 0, x, 0.01 * x)),
        (LeakyRelu(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
        (Softmax(), lambda x: np_softmax(x, 1)),
        (Softmax(axis=-1), lambda x: np_softmax(x, -1)),
    ],
    ids=["relu", "sigmoid", "tanh", "leaky", "leaky0.2", "softmax", "softmax-last"],
)
def test_elementwise_layers_match_numpy(layer, fn):
    x = rand((3, 4, 5), 6, jnp.float64)
    y, state = layer.apply({}, {}, x)
    np.testing.assert_allclose(y, fn(np.asarray(x)), rtol=1e-13, atol=1e-15)
    assert state == {}


# ------------------------------------------------------------------- BatchNorm


def np_batchnorm_train(x, scale, bias, mean0, var0, momentum=0.1, eps=1e-5):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    count = x.size // x.shape[1]
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    y = y * scale.reshape(shape) + bias.reshape(shape)
    new_mean = (1 - momentum) * mean0 + momentum * mean
    new_var = (1 - momentum) * var0 + momentum * var * count / (count - 1)
    return y, new_mean, new_var


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 5)])
def test_batchnorm_train_and_eval_match_numpy(shape):
    layer = BatchNorm(dtype=jnp.float64)
    _, params, state = layer.init(KEY, (B,) + shape[1:])
    c = shape[1]
    np.testing.assert_array_equal(state.mean, np.zeros(c))
    np.testing.assert_array_equal(state.var, np.ones(c))
    params = {"scale": rand((c,), 7, jnp.float64), "bias": rand((c,), 8, jnp.float64)}
    x = rand(shape, 9, jnp.float64, loc=3.0) * 2.0
    y, new = layer.apply(params, state, x, train=True)
    want_y, want_mean, want_var = np_batchnorm_train(
        np.asarray(x), np.asarray(params["scale"]), np.asarray(params["bias"]),
        np.zeros(c), np.ones(c),
    )  # fmt: skip
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new.mean, want_mean, rtol=1e-13)
    np.testing.assert_allclose(new.var, want_var, rtol=1e-13)
    # Evaluation: normalise with the running statistics, return them unchanged.
    x2 = rand(shape, 10, jnp.float64)
    y2, same = layer.apply(params, new, x2, train=False)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    want2 = (np.asarray(x2) - want_mean.reshape(bshape)) / np.sqrt(
        want_var.reshape(bshape) + 1e-5
    ) * np.asarray(params["scale"]).reshape(bshape) + np.asarray(
        params["bias"]
    ).reshape(bshape)
    np.testing.assert_allclose(y2, want2, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(same.mean, new.mean)
    np.testing.assert_array_equal(same.var, new.var)


def test_batchnorm_float32_state_stays_float32():
    layer = BatchNorm()
    _, params, state = layer.init(KEY, (B, 3, 4, 4))
    y, new = jax.jit(partial(layer.apply, train=True))(
        params, state, rand((2, 3, 4, 4))
    )
    assert y.dtype == new.mean.dtype == new.var.dtype == jnp.float32


_TORCH_BN = """
for i, c in enumerate(configs):
    mean, var = t(f"mean{i}"), t(f"var{i}")
    y = F.batch_norm(t(f"x{i}"), mean, var, t(f"scale{i}"), t(f"bias{i}"),
                     training=True, momentum=0.1, eps=1e-5)
    save(f"y{i}", y)
    save(f"mean{i}", mean)  # updated in place by torch
    save(f"var{i}", var)
"""


def test_batchnorm_matches_torch(run_torch):
    shapes = [(4, 3, 5, 5), (6, 5), (2, 2, 3, 1)]
    arrays, ours = {}, []
    layer = BatchNorm(dtype=jnp.float64)
    for i, shape in enumerate(shapes):
        c = shape[1]
        params = {"scale": rand((c,), 11 + i, jnp.float64),
                  "bias": rand((c,), 12 + i, jnp.float64)}  # fmt: skip
        state = funcnn.nn.BatchNormState(
            rand((c,), 13 + i, jnp.float64), jnp.exp(rand((c,), 14 + i, jnp.float64))
        )
        x = rand(shape, 15 + i, jnp.float64, loc=-1.0)
        ours.append(layer.apply(params, state, x, train=True))
        arrays.update({f"x{i}": x, f"scale{i}": params["scale"],
                       f"bias{i}": params["bias"], f"mean{i}": state.mean,
                       f"var{i}": state.var})  # fmt: skip
    theirs = run_torch(_TORCH_BN, {k: np.asarray(v) for k, v in arrays.items()}, shapes)
    for i, (y, new) in enumerate(ours):
        np.testing.assert_allclose(y, theirs[f"y{i}"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(new.mean, theirs[f"mean{i}"], rtol=1e-12)
        np.testing.assert_allclose(new.var, theirs[f"var{i}"], rtol=1e-12)


# --------------------------------------------------------------------- Dropout


def test_dropout_rate_is_the_probability_of_dropping():
    layer = Dropout(0.3)
    x = jnp.ones((400, 500), jnp.float32)
    y, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(1))
    dropped = float(jnp.mean(y == 0))
    # 200,000 draws: the standard error of the fraction is about 0.001.
    assert abs(dropped - 0.3) < 0.006
    survivors = np.asarray(y[y != 0])
    np.testing.assert_allclose(survivors, np.float32(1 / 0.7), rtol=1e-6)
    # Inverted dropout keeps the mean.
    assert abs(float(jnp.mean(y)) - 1.0) < 0.01


def test_dropout_key_determines_mask():
    layer = Dropout(0.5)
    x = rand((64, 64), 16)
    a, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(2))
    b, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(2))
    c, _ = layer.apply({}, {}, x, train=True, key=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert np.any((np.asarray(a) == 0) != (np.asarray(c) == 0))
    # Masked positions are exactly zero, the rest exactly x / (1 - rate).
    kept = np.asarray(a) != 0
    np.testing.assert_array_equal(np.asarray(a)[kept], np.asarray(x / 0.5)[kept])


def test_dropout_eval_is_identity_and_training_needs_a_key():
    layer = Dropout(0.3)
    x = rand((4, 5), 17)
    y, _ = layer.apply({}, {}, x)
    assert y is x
    y, _ = layer.apply({}, {}, x, train=False, key=jax.random.key(0))
    np.testing.assert_array_equal(y, x)
    y, _ = Dropout(0.0).apply({}, {}, x, train=True)
    np.testing.assert_array_equal(y, x)
    message = (
        "Dropout: expected a PRNG key in training (apply(..., train=True, "
        "key=jax.random.key(0))), got key=None."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        layer.apply({}, {}, x, train=True)


# ----------------------------------------------------------------- combinators


def test_split_concat_round_trip():
    x = rand((2, 6, 3, 3), 18)
    for split in (Split(3), Split([1, 2, 3]), Split([6])):
        net = serial(split, Concat())
        shape, params, state = net.init(KEY, (B, 6, 3, 3))
        assert shape == (B, 6, 3, 3)
        y, _ = net.apply(params, state, x)
        np.testing.assert_array_equal(y, x)
    parts, _ = Split([1, 2, 3]).apply({}, {}, x)
    for part, (lo, hi) in zip(parts, [(0, 1), (1, 3), (3, 6)]):
        np.testing.assert_array_equal(part, x[:, lo:hi])
    parts, _ = Split(2, axis=3).apply({}, {}, rand((1, 2, 3, 4), 19))
    assert [p.shape for p in parts] == [(1, 2, 3, 2)] * 2
    y, _ = Concat(axis=2).apply({}, {}, (x, 2 * x))
    np.testing.assert_array_equal(y, np.concatenate([x, 2 * x], axis=2))


def test_concat_split_negative_axis():
    shape, _, _ = Concat(axis=-1).init(KEY, ((B, 3), (B, 4)))
    assert shape == (B, 7)
    shapes, _, _ = Split(2, axis=-1).init(KEY, (B, 3, 4))
    assert shapes == ((B, 3, 2), (B, 3, 2))


def test_residual_is_block_plus_input():
    net = residual(Conv2D(3, 3, padding=1), Relu())
    _, params, state = net.init(KEY, (B, 3, 5, 5))
    x = rand((2, 3, 5, 5), 20)
    y, _ = net.apply(params, state, x)
    # The block's layers and the shortcut are the residual's own children.
    p = params["00_conv"]
    assert set(params) == {"00_conv", "01_relu", "shortcut"}
    want = jax.nn.relu(ops.conv2d(x, p["w"], p["b"], padding=1)) + x
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_parallel_branches_fanout_add_identity():
    x = rand((2, 3, 4, 4), 21)
    ys, _ = FanOut(3).apply({}, {}, x)
    assert len(ys) == 3 and all(y is x for y in ys)
    y, _ = Add().apply({}, {}, (x, 2 * x, 3 * x))
    np.testing.assert_allclose(y, 6 * x, rtol=1e-6)
    y, _ = Identity().apply({}, {}, x)
    assert y is x
    net = parallel(Tanh(), Identity(), Flatten())
    shapes, params, state = net.init(KEY, ((B, 3), (B, 2), (B, 2, 2)))
    assert shapes == ((B, 3), (B, 2), (B, 4))
    a, b, c = rand((2, 3), 22), rand((2, 2), 23), rand((2, 2, 2), 24)
    (ya, yb, yc), _ = net.apply(params, state, (a, b, c))
    np.testing.assert_allclose(ya, np.tanh(a), rtol=1e-6)
    np.testing.assert_array_equal(yb, b)
    np.testing.assert_array_equal(yc, c.reshape(2, 4))
    net = branches(Relu(), Tanh())
    (yr, yt), _ = net.apply(*net.init(KEY, (B, 3))[1:], a)
    np.testing.assert_array_equal(yr, jax.nn.relu(a))
    np.testing.assert_array_equal(yt, jnp.tanh(a))


def test_serial_splits_the_key_and_passes_train():
    net = serial(Dropout(0.5), Dropout(0.5))
    _, params, state = net.init(KEY, (B, 100))
    x = jnp.ones((4, 100))
    y1, _ = net.apply(params, state, x, train=True, key=jax.random.key(5))
    y2, _ = net.apply(params, state, x, train=True, key=jax.random.key(5))
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(np.asarray(y1)).tolist()) <= {0.0, 4.0}
    y3, _ = net.apply(params, state, x, train=False)
    np.testing.assert_array_equal(y3, x)


# ---------------------------------------------------------------------- models


def test_param_tree_keys_are_readable():
    _, params, state = abstract_init(funcnn.lenet(input_hw=(8, 8)), (B, 1, 8, 8))
    assert list(params) == [
        "00_conv", "01_relu", "02_maxpool", "03_conv", "04_relu", "05_maxpool",
        "06_flatten", "07_dense", "08_relu", "09_dense", "10_relu", "11_dense",
    ]  # fmt: skip
    paths = [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    assert paths[:2] == ["['00_conv']['b']", "['00_conv']['w']"]
    assert "['11_dense']['w']" in paths
    _, params, state = abstract_init(funcnn.vgg_small(), (B, 3, 8, 8))
    assert set(params["00_conv"]) == {"w"}  # no bias in front of BatchNorm
    assert isinstance(state["01_batchnorm"], funcnn.nn.BatchNormState)


MODELS = [
    ("lenet-8x8", funcnn.lenet(input_hw=(8, 8)), (2, 1, 8, 8)),
    ("lenet-28x28", funcnn.lenet(), (2, 1, 28, 28)),
    ("vgg_small", funcnn.vgg_small(), (2, 3, 8, 8)),
]


def _model_loss(model, mode, train):
    def loss(params, state, x, g, key):
        y, new_state = model.apply(params, state, x, train=train, key=key, grad=mode)
        return jnp.vdot(y, g), (y, new_state)

    return fast_jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize(
    "model, x_shape", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS]
)
def test_model_custom_matches_autodiff(model, x_shape):
    shape, params, state = jit_init(model, (B,) + x_shape[1:])
    x = rand(x_shape, 25)
    g = rand(with_batch(shape, x_shape[0]), 26)
    train = bool(jax.tree.leaves(state))  # vgg: BatchNorm (and Dropout) training
    res = {}
    for mode in ("custom", "autodiff"):
        (_, (y, new_state)), grads = _model_loss(model, mode, train)(
            params, state, x, g, jax.random.key(7)
        )
        res[mode] = (y, new_state, grads)
    (y, st, gr), (y_ref, st_ref, gr_ref) = res["custom"], res["autodiff"]
    assert y.shape == with_batch(shape, x_shape[0])
    # Not bit-identical: first layers with few taps take the patches (im2col)
    # formulation in custom mode, which sums in another order (funcnn.ops.conv).
    assert_tree_close(y, y_ref, 1e-5)
    assert_tree_close(st, st_ref, 1e-5)
    assert_tree_close(gr, gr_ref, 1e-5)
    assert all(float(jnp.max(jnp.abs(leaf))) > 0 for leaf in jax.tree.leaves(gr))


def test_model_jit_equals_eager():
    model = funcnn.lenet(input_hw=(8, 8))
    _, params, state = jit_init(model, (B, 1, 8, 8))
    x = rand((2, 1, 8, 8), 27)
    apply = model.apply
    y, _ = apply(params, state, x)
    y_jit, _ = jax.jit(apply)(params, state, x)
    np.testing.assert_allclose(y_jit, y, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- errors

def _net_call(swap=False, other_state=False, **kwargs):
    """Calls a small conv-batchnorm model, with its arguments spoiled as asked."""
    net = serial(Conv2D(2, 1), BatchNorm())
    _, params, state = net.init(KEY, (B, 1, 3, 3))
    if swap:
        params, state = state, params
    if other_state:
        state = serial(Conv2D(2, 1), Relu()).init(KEY, (B, 1, 3, 3))[2]
    return net.apply(params, state, jnp.ones((2, 1, 3, 3)), **kwargs)


LAYER_ERRORS = [
    (lambda: Conv2D(0, 3), ValueError,
     "Conv2D: expected out_channels to be a positive int, got 0."),
    (lambda: Conv2D(4, 0), ValueError, "Conv2D: expected window >= 1, got 0."),
    (lambda: Conv2D(4, 3).init(KEY, (B, 3, 8)), ValueError,
     "Conv2D: expected an input shape of rank 4 (N, C_in, H, W), got (-1, 3, 8)."),
    (lambda: Conv2D(4, 3, groups=2).init(KEY, (B, 3, 8, 8)), ValueError,
     "Conv2D: expected groups (=2) to divide C_in (=3) and out_channels (=4)."),
    (lambda: Conv2D(4, 5).init(KEY, (B, 3, 3, 3)), ValueError,
     "conv2d: expected the effective window (5) to fit in the padded input along H"),
    (lambda: MaxPool2D(3, padding=2).init(KEY, (B, 3, 8, 8)), ValueError,
     "max_pool2d: expected padding along H at most half the effective window"),
    (lambda: AvgPool2D(2).init(KEY, (B, 8, 8)), ValueError,
     "AvgPool2D: expected an input shape of rank 4 (N, C, H, W), got (-1, 8, 8)."),
    (lambda: Dense(0), ValueError,
     "Dense: expected out_features to be a positive int, got 0."),
    (lambda: Dense(3).init(KEY, (B, 2, 2)), ValueError,
     "Dense: expected an input shape of rank 2 (N, F_in), got (-1, 2, 2)."),
    (lambda: Dense(3).apply({"w": jnp.ones((3, 4))}, {}, jnp.ones((2, 1, 2, 2))),
     ValueError,
     "Dense: expected x of shape (N, 4), got (2, 1, 2, 2). Add a Flatten() layer "
     "before Dense for image inputs."),
    (lambda: BatchNorm(momentum=1.5), ValueError,
     "BatchNorm: expected 0 <= momentum <= 1, got 1.5."),
    (lambda: BatchNorm().init(KEY, (B, 3, 4)), ValueError,
     "BatchNorm: expected an input shape (N, C) or (N, C, H, W), got (-1, 3, 4)."),
    (lambda: Dropout(1.0), ValueError,
     "Dropout: expected 0 <= rate < 1 (the probability of dropping), got 1.0."),
    (lambda: Dropout(-0.1), ValueError,
     "Dropout: expected 0 <= rate < 1 (the probability of dropping), got -0.1."),
    (lambda: serial(), TypeError,
     "serial: expected one or more Layer objects, got none."),
    (lambda: serial(Relu(), jax.nn.relu), TypeError,
     "serial: expected Layer objects, got custom_jvp at position 1"),
    (lambda: serial(Conv2D(2, 1), Relu), TypeError,
     "serial: expected Layer objects, got function at position 1 (<function Relu"),
    (lambda: serial(Relu) and None, TypeError, "Call the factory: Relu() rather than"),
    (lambda: _net_call(trian=True), TypeError,
     "serial.apply: expected only the keywords train, key, grad, hook, got 'trian'. "
     "Did you mean 'train'?"),
    (lambda: Relu().apply({}, {}, jnp.ones(2), gard="custom"), TypeError,
     "Relu.apply: expected only the keywords train, key, grad, hook, got 'gard'."),
    (lambda: _net_call(swap=True), TypeError,
     "Conv2D.apply: expected params with keys ['w'], got a dict with keys []. Pass "
     "apply(params, state, x) in that order"),
    (lambda: _net_call(other_state=True), ValueError,
     "serial.apply: expected state with keys ['00_conv', '01_batchnorm'], got "
     "missing ['01_batchnorm'] and extra ['01_relu']. Pass the state that this "
     "model's init returned"),
    (lambda: Conv2D(2, 1).apply(BatchNorm().init(KEY, (B, 2))[2], {}, jnp.ones(2)),
     TypeError, "Conv2D.apply: expected params with keys ['w'], got a BatchNormState"),
    (lambda: BatchNorm().apply({"scale": 1, "bias": 0}, {}, jnp.ones((2, 3))),
     TypeError, "BatchNorm.apply: expected state to be a BatchNormState(mean, var), "
     "got a dict with keys []."),
    (lambda: _net_call(grad={"*pool*": "autodiff", "*": "custom"}), ValueError,
     "serial: expected every grad mapping key to match a layer path, got ['*pool*'] "
     "matching none. The model's layer paths are ['00_conv', '01_batchnorm']."),
    (lambda: Conv2D(4, 1).init(KEY, (B, 0, 4, 4)), ValueError,
     "Conv2D: expected at least one input channel, got input shape (-1, 0, 4, 4)."),
    (lambda: BatchNorm(eps=-1.0), ValueError, "BatchNorm: expected eps > 0, got -1.0."),
    (lambda: LeakyRelu(5), ValueError,
     "LeakyRelu: expected 0 <= negative_slope < 1, got 5."),
    (lambda: parallel(Relu(), Tanh()).init(KEY, (B, 3)), ValueError,
     "parallel: expected a tuple of 2 input shapes, got (-1, 3). Use branches(...) to "
     "feed one input to every layer, or FanOut/Split before parallel."),
    (lambda: Add().init(KEY, ((B, 3), (B, 4))), ValueError,
     "Add: expected inputs of one shape, got shapes ((-1, 3), (-1, 4))."),
    (lambda: Concat().init(KEY, ((B, 2, 4, 4), (B, 2, 5, 4))), ValueError,
     "Concat: expected inputs that agree on every axis but 1, got shapes "
     "[(-1, 2, 4, 4), (-1, 2, 5, 4)]."),
    (lambda: Split(4).init(KEY, (B, 6, 2, 2)), ValueError,
     "Split: expected 4 sections to divide axis 1 of size 6."),
    (lambda: Split([2, 2]).init(KEY, (B, 6, 2, 2)), ValueError,
     "Split: expected positive section sizes summing to 6 (axis 1), got [2, 2]."),
    (lambda: Split([0, 6]).apply({}, {}, jnp.ones((1, 6))), ValueError,
     "Split: expected positive section sizes summing to 6 (axis 1), got [0, 6]."),
]  # fmt: skip


@pytest.mark.parametrize(
    "make, err, message", LAYER_ERRORS, ids=[m[2][:40] for m in LAYER_ERRORS]
)
def test_layer_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()


@pytest.mark.parametrize(
    "hw, kernel, out_hw",
    [((28, 28), 5, (5, 5)), ((32, 32), 3, (7, 7)), ((8, 8), 3, (2, 2))],
)
def test_lenet_layers_shapes(hw, kernel, out_hw):
    """LeNet's shapes by hand: 28x28 -> conv5 p2 28 -> pool 14 -> conv5 10 -> pool
    5; 32x32 with a 3x3 second conv -> 32, 16, 14, 7; 8x8 SAME -> 8, 4, 4, 2."""
    model = funcnn.lenet(7, input_hw=hw, width=2, second_kernel=kernel)
    layers = funcnn.lenet_layers(7, input_hw=hw, width=2, second_kernel=kernel)
    assert len(layers) == 12
    out, params, _ = jit_init(model, (3, 1, *hw))
    assert out == (3, 7)
    assert params["03_conv"]["w"].shape == (32, 12, kernel, kernel)
    assert params["07_dense"]["w"].shape == (120, 32 * out_hw[0] * out_hw[1])

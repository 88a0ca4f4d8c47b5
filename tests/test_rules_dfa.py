"""Tests for direct feedback alignment: its gradients against a DFA written out
here from plain-lax pieces (float64, NCHW and NHWC), the invariant that a layer's
delta depends on the layers above it only through the output error, hidden
layers that learn from the projected error alone, the delta funcnn.backward_trace
shows, and the errors."""

from __future__ import annotations

import hashlib
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, rule_model
from jax import lax

import funcnn
from funcnn import ops, rules

pytestmark = pytest.mark.usefixtures("release_compiled")

F64 = jnp.float64
DFA = "direct_feedback_alignment"


def projection(seed, path, feature_nchw, size=4, gain=0.1):
    """B `(E, C, H, W)` or `(E, F)`: normal, std gain / sqrt(E), from the key
    fold_in(PRNGKey(seed), sha256(path)[:4])."""
    code = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "little")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), np.uint32(code))
    b = jax.random.normal(key, (size, *feature_nchw), F64)
    return b * gain / math.sqrt(size)


def case(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((3, 1, 6, 6)))
    return x, jnp.asarray([0, 3, 1])


def loss_of(model, state, x, y, grad):
    def loss(p):
        out, _ = model.apply(p, state, x, grad=grad)
        return funcnn.softmax_cross_entropy(out, y)

    return loss


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_dfa_gradients_are_the_projected_errors_backpropagated_one_layer(layout):
    """Each hidden layer's parameter gradients are the exact ones of the layer fed
    `e @ B` at the input of the DFA layer above it, through the activation and
    pool between; the last layer's are exact."""
    model = rule_model(F64, layout)
    x, y = case()
    xl = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    _, params, state = model.init(jax.random.PRNGKey(2), (-1, *xl.shape[1:]))
    got = jax.jit(jax.grad(loss_of(model, state, xl, y, DFA)))(params)

    # The forward from plain lax, NCHW, and e = dL/d(logits).
    c, d4, d6 = params["00_conv"], params["04_dense"], params["06_dense"]

    def conv(x, w):
        dn = ("NCHW", "OIHW", "NCHW")
        y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=dn)  # fmt: skip
        return y + c["b"][None, :, None, None]

    def pool_flat(a0):
        h = lax.reduce_window(jax.nn.relu(a0), -jnp.inf, lax.max,
                              (1, 1, 2, 2), (1, 1, 2, 2), "VALID")  # fmt: skip
        return h.reshape(h.shape[0], -1)

    a0 = conv(x, c["w"])
    h3 = pool_flat(a0)
    a4 = h3 @ d4["w"].T + d4["b"]
    h5 = jax.nn.relu(a4)
    out = h5 @ d6["w"].T + d6["b"]
    e = (jax.nn.softmax(out) - jax.nn.one_hot(y, 4)) / 3
    b6 = projection(0, "06_dense", (5,))
    b4 = projection(0, "04_dense", (27,))
    g4 = (e @ b6) * (a4 > 0)
    g0 = jax.vjp(pool_flat, a0)[1](e @ b4)[0]
    want = {
        "06_dense": {"w": e.T @ h5, "b": e.sum(0)},
        "04_dense": {"w": g4.T @ h3, "b": g4.sum(0)},
        "00_conv": {"w": jax.vjp(lambda w: conv(x, w), c["w"])[1](g0)[0],
                    "b": g0.sum((0, 2, 3))},
    }  # fmt: skip
    for path, grads in want.items():
        for name, value in grads.items():
            assert_close(got[path][name], value, 1e-10)
    # The projection rules.feedback_weights reports is the one drawn above.
    feedback = rules.feedback_weights(model, params, DFA, input_shape=xl.shape)
    assert_close(feedback["06_dense"], b6, 1e-15)
    assert sorted(feedback) == ["00_conv", "04_dense", "06_dense"]


def test_a_layers_delta_depends_on_the_layers_above_only_through_e():
    """With a loss linear in the outputs, e is fixed: changing the weights above
    a layer leaves its DFA gradients as they were (backprop's change)."""
    model = rule_model(F64)
    _, params, state = model.init(jax.random.PRNGKey(3), (-1, 1, 6, 6))
    x, _ = case(1)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal((3, 4)))

    def grads_of(p, grad):
        def loss(p):
            out, _ = model.apply(p, state, x, grad=grad)
            return jnp.sum(out * weights)  # e = weights, whatever the params

        return jax.grad(loss)(p)

    other = jax.tree.map(lambda a: a, params)
    rng = np.random.default_rng(4)
    for path in ("04_dense", "06_dense"):
        other[path] = {k: v + jnp.asarray(rng.standard_normal(v.shape))
                       for k, v in params[path].items()}  # fmt: skip
    for grad, same in ((DFA, True), ("custom", False)):
        a, b = grads_of(params, grad), grads_of(other, grad)
        conv_a, conv_b = a["00_conv"]["w"], b["00_conv"]["w"]
        if same:
            np.testing.assert_array_equal(conv_a, conv_b)
        else:
            assert not np.allclose(conv_a, conv_b)
    # 04_dense only sees 06_dense's weights through e as well.
    moved = dict(params, **{"06_dense": other["06_dense"]})
    np.testing.assert_array_equal(
        grads_of(params, DFA)["04_dense"]["w"], grads_of(moved, DFA)["04_dense"]["w"]
    )


def test_hidden_layers_learn_from_the_projected_error_alone():
    """DFA trains the hidden layers, taught by projections of e alone (the
    invariant above), well past what the output layer reaches on their random
    features: the training loss of a small MLP with hidden layers frozen stays
    high, DFA's falls to backprop's."""
    model = funcnn.serial(
        funcnn.Dense(32), funcnn.Relu(), funcnn.Dense(32), funcnn.Relu(),
        funcnn.Dense(3),
    )  # fmt: skip
    rng = np.random.default_rng(5)
    x = rng.standard_normal((120, 6)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1] > 0).astype(int) + (x[:, 2] > 0.5)).astype(np.int32)

    def labels(params):  # the output layer's params "out", the rest "hidden"
        return {
            key: jax.tree.map(
                lambda _, k=key: "out" if k == "04_dense" else "hidden", v
            )
            for key, v in params.items()
        }

    def final_loss(grad, hidden):
        opt = optax.multi_transform({"out": optax.sgd(0.1), "hidden": hidden}, labels)
        state = funcnn.create_train_state(model, (-1, 6), opt, seed=1)
        step = funcnn.make_train_step(model, opt, grad=grad)
        for _ in range(300):
            state, _ = step(state, (x, y))
        return funcnn.evaluate(funcnn.make_eval_step(model), state, x, y, 120)["loss"]

    frozen = final_loss("custom", optax.set_to_zero())
    # Full-scale projections: this small MLP stays stable with them.
    dfa = final_loss(rules.direct_feedback_alignment(gain=1.0), optax.sgd(0.1))
    backprop = final_loss("custom", optax.sgd(0.1))
    assert frozen > 0.4  # the random features alone (measured: 0.59)
    assert dfa < 0.25 * frozen  # (measured: 0.089)
    assert dfa < 2 * backprop  # (measured: backprop 0.070)


def test_backward_trace_shows_the_projection_as_the_layers_input_delta():
    model = rule_model(F64)
    _, params, state = model.init(jax.random.PRNGKey(6), (-1, 1, 6, 6))
    x, y = case(2)
    trace = funcnn.backward_trace(model, params, state, (x, y), grad=DFA)
    e = trace["06_dense"].delta_out
    b = rules.feedback_weights(model, params, DFA, input_shape=x.shape)
    assert_close(trace["06_dense"].delta_in, e @ b["06_dense"], 1e-12)
    assert_close(trace["04_dense"].delta_in, e @ b["04_dense"], 1e-12)
    want = (e @ b["00_conv"].reshape(4, -1)).reshape(x.shape)
    assert_close(trace["00_conv"].delta_in, want, 1e-12)
    # The exact rule, by contrast, sends the delta back through 06_dense's W.
    exact = funcnn.backward_trace(model, params, state, (x, y))
    assert_close(exact["06_dense"].delta_in, e @ params["06_dense"]["w"], 1e-12)


NO_LAYER = funcnn.serial(funcnn.MaxPool2D(2), funcnn.Flatten())
_, NO_PARAMS, NO_STATE = NO_LAYER.init(jax.random.PRNGKey(0), (-1, 1, 4, 4))

ERRORS = [
    (lambda: funcnn.make_train_step(NO_LAYER, optax.sgd(0.1), grad=DFA), ValueError,
     "make_train_step: expected a model with a conv2d or dense layer under "
     "direct_feedback_alignment, got none among its layers ['00_maxpool', "
     "'01_flatten']."),
    (lambda: NO_LAYER.apply(NO_PARAMS, NO_STATE, jnp.ones((1, 1, 4, 4)), grad=DFA),
     ValueError, "serial: expected a model with a conv2d or dense layer under "),
    (lambda: ops.dense(jnp.ones((2, 3)), jnp.ones((4, 3)),
                       grad=rules.direct_feedback_alignment(seed=1)), ValueError,
     "dense: expected a rule an op can run alone, got "
     "DirectFeedbackAlignment(seed=1, gain=0.1, clip=None)"),
    (lambda: rules.feedback_weights(rule_model(F64), rule_model(F64).init(
        jax.random.PRNGKey(0), (-1, 1, 6, 6))[1], DFA), ValueError,
     "rules.feedback_weights: expected input_shape= for direct_feedback_alignment"),
    (lambda: rules.direct_feedback_alignment(gain=-1.0), ValueError,
     "direct_feedback_alignment: expected gain > 0, got -1.0."),
]  # fmt: skip


@pytest.mark.parametrize("make, err, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()

"""Tests for funcnn.training.losses: values against numpy and hand-computed answers,
gradients against the softmax-minus-one-hot formula, and error messages."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn.training.losses import accuracy, mse, softmax_cross_entropy


def np_log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-13), (jnp.float32, 1e-6)])
@pytest.mark.parametrize("n, k", [(1, 2), (5, 3), (16, 10)])
def test_softmax_cross_entropy_matches_numpy(n, k, dtype, rtol):
    rng = np.random.default_rng(n * k)
    logits = rng.standard_normal((n, k)) * 3
    labels = rng.integers(0, k, n)
    got = softmax_cross_entropy(jnp.asarray(logits, dtype), jnp.asarray(labels))
    want = -np.mean(np_log_softmax(logits)[np.arange(n), labels])
    assert got.dtype == dtype and got.shape == ()
    np.testing.assert_allclose(got, want, rtol=rtol)


def test_softmax_cross_entropy_gradient_is_softmax_minus_one_hot():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4))
    labels = np.array([0, 3, 1, 1, 2, 0])
    grad = jax.grad(softmax_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    want = (np.exp(np_log_softmax(logits)) - np.eye(4)[labels]) / 6
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-15)


def test_softmax_cross_entropy_hand_computed_and_stable():
    # Two equal logits: -log(1/2) per example.
    got = softmax_cross_entropy(jnp.zeros((3, 2)), jnp.array([0, 1, 0]))
    np.testing.assert_allclose(got, np.log(2.0), rtol=1e-15)
    # Huge logits neither overflow nor lose the answer: losses 0 and 1000.
    logits = jnp.array([[1000.0, 0.0], [1000.0, 0.0]], jnp.float32)
    got = softmax_cross_entropy(logits, jnp.array([0, 1]))
    assert np.isfinite(float(got))
    np.testing.assert_allclose(got, 500.0, rtol=1e-6)


def test_mse_hand_computed():
    outputs = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    targets = jnp.array([[0.0, 2.0], [1.0, 1.0]])
    # Per example 0.5 * ((1-0)^2 + 0) = 0.5 and 0.5 * (2^2 + 3^2) = 6.5; mean 3.5.
    np.testing.assert_array_equal(mse(outputs, targets), 3.5)
    g = jax.grad(mse)(outputs, targets)
    np.testing.assert_array_equal(g, (outputs - targets) / 2)


def test_mse_sums_over_all_non_batch_axes():
    rng = np.random.default_rng(1)
    outputs, targets = rng.standard_normal((2, 3, 4, 5, 2))
    want = np.mean(0.5 * np.sum((targets - outputs) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(mse(jnp.asarray(outputs), jnp.asarray(targets)), want,
                               rtol=1e-14)  # fmt: skip


def test_accuracy_hand_computed():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_allclose(accuracy(logits, jnp.array([1, 1, 1])), 2 / 3)
    np.testing.assert_allclose(accuracy(logits, jnp.array([1, 0, 1])), 1.0)
    np.testing.assert_allclose(accuracy(logits, jnp.array([0, 1, 0])), 0.0)


def test_losses_under_jit_equal_eager():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.standard_normal((8, 5)))
    labels = jnp.asarray(rng.integers(0, 5, 8))
    for fn in (softmax_cross_entropy, accuracy):
        got = jax.jit(fn)(logits, labels)
        np.testing.assert_allclose(got, fn(logits, labels), rtol=1e-15)
    got = jax.jit(mse)(logits, 2 * logits)
    np.testing.assert_allclose(got, mse(logits, 2 * logits), rtol=1e-15)


LOGITS = jnp.zeros((4, 3))
ERRORS = [
    (softmax_cross_entropy, (jnp.zeros(3), jnp.zeros(3, jnp.int32)), ValueError,
     "softmax_cross_entropy: expected logits of shape (N, K), got shape (3,)."),
    (softmax_cross_entropy, (LOGITS, jnp.zeros(3, jnp.int32)), ValueError,
     "softmax_cross_entropy: expected integer labels of shape (N,) = (4,), got shape "
     "(3,)."),
    (softmax_cross_entropy, (LOGITS, jnp.zeros((4, 1), jnp.int32)), ValueError,
     "got shape (4, 1)."),
    (softmax_cross_entropy, (LOGITS, jnp.zeros(4)), TypeError,
     "softmax_cross_entropy: expected integer labels, got dtype float64."),
    (accuracy, (jnp.zeros((2, 3, 4)), jnp.zeros(2, jnp.int32)), ValueError,
     "accuracy: expected logits of shape (N, K), got shape (2, 3, 4)."),
    (accuracy, (LOGITS, jnp.zeros(5, jnp.int32)), ValueError,
     "accuracy: expected integer labels of shape (N,) = (4,), got shape (5,)."),
    (accuracy, (LOGITS, jnp.zeros(4, jnp.float32)), TypeError,
     "accuracy: expected integer labels, got dtype float32."),
    (mse, (jnp.zeros((2, 3)), jnp.zeros((2, 4))), ValueError,
     "mse: expected outputs and targets of one shape, got (2, 3) and (2, 4)."),
]  # fmt: skip


@pytest.mark.parametrize("how", ["eager", "jit"])
@pytest.mark.parametrize(
    "fn, args, err, message", ERRORS, ids=[str(i) for i in range(len(ERRORS))]
)
def test_loss_errors(fn, args, err, message, how):
    if how == "jit":
        fn = jax.jit(fn)
    with pytest.raises(err, match=re.escape(message)):
        fn(*args)

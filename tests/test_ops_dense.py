"""Tests for funcnn.ops.dense: the hand-written backward rule against jax autodiff,
float64 central differences, a hand-computed answer and PyTorch (in a
subprocess); second order; and its error messages."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from funcnn import ops

pytestmark = pytest.mark.usefixtures("release_compiled")

# (N, F_in, F_out, bias)
SHAPES = [(1, 1, 1, True), (3, 5, 4, True), (4, 7, 2, False), (2, 16, 9, True)]


def make_args(n, f_in, f_out, bias, seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, f_in)), dtype)
    w = jnp.asarray(rng.standard_normal((f_out, f_in)), dtype)
    b = jnp.asarray(rng.standard_normal(f_out), dtype) if bias else None
    g = jnp.asarray(rng.standard_normal((n, f_out)), dtype)
    return x, w, b, g


def vjp_of(grad, x, w, b, g):
    """(y, dx, dw, db) of `dense(..., grad=grad)` with cotangent g."""
    if b is None:
        y, pull = jax.vjp(lambda x, w: ops.dense(x, w, grad=grad), x, w)
        return (y, *pull(g), None)
    y, pull = jax.vjp(lambda x, w, b: ops.dense(x, w, b, grad=grad), x, w, b)
    return (y, *pull(g))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_custom_equals_autodiff(shape):
    x, w, b, g = make_args(*shape, seed=sum(shape))
    ours = vjp_of("custom", x, w, b, g)
    theirs = vjp_of("autodiff", x, w, b, g)
    for a, t in zip(ours, theirs):
        if t is None:
            assert a is None
        else:
            assert_close(a, t, 1e-13)


def test_hand_computed():
    x = jnp.asarray([[1.0, 2.0]], jnp.float64)
    w = jnp.asarray([[3.0, -1.0], [0.5, 2.0], [0.0, 1.0]], jnp.float64)
    b = jnp.asarray([1.0, 0.0, -2.0], jnp.float64)
    g = jnp.asarray([[1.0, -1.0, 2.0]], jnp.float64)
    y, dx, dw, db = vjp_of("custom", x, w, b, g)
    np.testing.assert_array_equal(y, [[2.0, 4.5, 0.0]])  # 3-2+1, 0.5+4, 2-2
    np.testing.assert_array_equal(dx, [[3.0 - 0.5 + 0.0, -1.0 - 2.0 + 2.0]])
    np.testing.assert_array_equal(dw, [[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]])
    np.testing.assert_array_equal(db, [1.0, -1.0, 2.0])


def test_central_differences():
    """Every coordinate of dx, dw, db against (f(a + h) - f(a - h)) / 2h."""
    x, w, b, g = make_args(3, 4, 2, True, seed=11)
    args = [x, w, b]

    def f(*a):
        return jnp.vdot(ops.dense(*a), g)

    grads = jax.grad(f, (0, 1, 2))(*args)
    h = 1e-6
    for i, (a, da) in enumerate(zip(args, grads)):
        flat = np.asarray(a).ravel()
        fd = np.empty_like(flat)
        for j in range(flat.size):
            e = np.zeros_like(flat)
            e[j] = h
            up = [*args[:i], jnp.asarray((flat + e).reshape(a.shape)), *args[i + 1 :]]
            dn = [*args[:i], jnp.asarray((flat - e).reshape(a.shape)), *args[i + 1 :]]
            fd[j] = (f(*up) - f(*dn)) / (2 * h)
        assert_close(da, fd.reshape(a.shape), 1e-8)


def test_second_order():
    """Hessian-vector products through the custom rule equal autodiff's."""
    x, w, b, g = make_args(3, 5, 4, True, seed=5)
    rng = np.random.default_rng(6)
    vx, vw = (jnp.asarray(rng.standard_normal(a.shape)) for a in (x, w))

    def hvp(mode):
        # A nonlinear loss so the Hessian is not zero: sum(tanh(y) * g).
        def loss(x, w):
            return jnp.vdot(jnp.tanh(ops.dense(x, w, b, grad=mode)), g)

        grad = jax.grad(loss, (0, 1))
        return jax.jvp(grad, (x, w), (vx, vw))[1]

    for ours, theirs in zip(hvp("custom"), hvp("autodiff")):
        assert_close(ours, theirs, 1e-12)


def test_jit_and_float32():
    x, w, b, g = make_args(4, 6, 3, True, seed=9, dtype=jnp.float32)
    f = jax.jit(jax.grad(lambda x, w, b: jnp.vdot(ops.dense(x, w, b), g), (0, 1, 2)))
    ours = f(x, w, b)
    ref = jax.grad(
        lambda x, w, b: jnp.vdot(ops.dense(x, w, b, grad="autodiff"), g), (0, 1, 2)
    )(x, w, b)
    for a, t in zip(ours, ref):
        assert a.dtype == jnp.float32
        assert_close(a, t, 1e-6)


_TORCH_DENSE = """
for i, cfg in enumerate(configs):
    x, w = t(f"x{i}", True), t(f"w{i}", True)
    b = t(f"b{i}", True) if cfg["bias"] else None
    y = F.linear(x, w, b)
    y.backward(t(f"g{i}"))
    save(f"y{i}", y)
    save(f"dx{i}", x.grad)
    save(f"dw{i}", w.grad)
    if b is not None:
        save(f"db{i}", b.grad)
"""


def test_matches_torch(run_torch):
    arrays, configs, ours = {}, [], []
    for i, shape in enumerate(SHAPES):
        x, w, b, g = make_args(*shape, seed=40 + i)
        arrays.update({f"x{i}": x, f"w{i}": w, f"g{i}": g})
        if b is not None:
            arrays[f"b{i}"] = b
        configs.append({"bias": b is not None})
        ours.append(vjp_of("custom", x, w, b, g))
    theirs = run_torch(
        _TORCH_DENSE, {k: np.asarray(v) for k, v in arrays.items()}, configs
    )
    for i, (y, dx, dw, db) in enumerate(ours):
        assert_close(y, theirs[f"y{i}"], 1e-12)
        assert_close(dx, theirs[f"dx{i}"], 1e-12)
        assert_close(dw, theirs[f"dw{i}"], 1e-12)
        if db is not None:
            assert_close(db, theirs[f"db{i}"], 1e-12)


X = jnp.ones((2, 3), jnp.float32)
W = jnp.ones((4, 3), jnp.float32)

ERRORS = [
    (lambda: ops.dense(jnp.ones((2, 3, 4)), W), ValueError,
     "dense: expected x of rank 2 (N, F_in), got shape (2, 3, 4). Flatten it first: "
     "x.reshape(x.shape[0], -1)."),
    (lambda: ops.dense(X, jnp.ones(3)), ValueError,
     "dense: expected w of rank 2 (F_out, F_in), got shape (3,)."),
    (lambda: ops.dense([[1.0]], W), TypeError,
     "dense: expected x to be an array, got list."),
    (lambda: ops.dense(X, jnp.ones((4, 5), jnp.float32)), ValueError,
     "dense: expected w of shape (F_out, F_in) with F_in = x.shape[1] = 3, got w of "
     "shape (4, 5)."),
    (lambda: ops.dense(X, W.astype(jnp.float64)), TypeError,
     "dense: expected w with the dtype of x (float32), got float64."),
    (lambda: ops.dense(X.astype(jnp.int32), W.astype(jnp.int32)), TypeError,
     "dense: expected x with a floating dtype"),
    (lambda: ops.dense(X, W, jnp.ones(3, jnp.float32)), ValueError,
     "dense: expected b of shape (F_out,) = (4,), got (3,)."),
    (lambda: ops.dense(X, W, jnp.ones(4, jnp.float64)), TypeError,
     "dense: expected b with the dtype of x (float32), got float64."),
    (lambda: ops.dense(X, W, grad="manual"), ValueError,
     "dense: expected grad to be one of ('custom', 'autodiff'"),
]  # fmt: skip


@pytest.mark.parametrize("make, err, message", ERRORS, ids=[e[2][:48] for e in ERRORS])
def test_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()

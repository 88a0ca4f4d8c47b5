"""Tests for funcnn.ops.batch_norm: the hand-written backward rule against jax
autodiff of the reference, a numpy forward, float64 central differences (second
order too); which backward a BatchNorm layer runs under each grad; its errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from jax.test_util import check_grads

import funcnn
from funcnn import ops

pytestmark = pytest.mark.usefixtures("release_compiled")

# (x shape, layout): the channel axis is 1 in NCHW and (N, C), 3 in NHWC.
CASES = [((3, 4, 5, 2), "NCHW"), ((2, 3, 2, 4), "NHWC"), ((7, 3), "NCHW")]


def make_args(shape, layout, seed):
    rng = np.random.default_rng(seed)
    c = shape[3] if layout == "NHWC" else shape[1]
    # Far from zero mean: the variance must not come out of E[x^2] - E[x]^2.
    x = jnp.asarray(3.0 + 2.0 * rng.standard_normal(shape))
    scale = jnp.asarray(rng.uniform(0.5, 1.5, c))
    bias = jnp.asarray(rng.standard_normal(c))
    cts = (
        jnp.asarray(rng.standard_normal(shape)),
        jnp.asarray(rng.standard_normal(c)),
        jnp.asarray(rng.standard_normal(c)),
    )
    return x, scale, bias, cts


def np_batch_norm(x, scale, bias, layout, eps=1e-5):
    """(y, mean, biased var) in float64 numpy, channels moved last first."""
    xl = np.moveaxis(x, 1, -1) if layout == "NCHW" and x.ndim == 4 else x
    flat = xl.reshape(-1, xl.shape[-1])
    mean, var = flat.mean(axis=0), flat.var(axis=0)
    y = (xl - mean) / np.sqrt(var + eps) * scale + bias
    y = np.moveaxis(y, -1, 1) if layout == "NCHW" and x.ndim == 4 else y
    return y, mean, var


@pytest.mark.parametrize("shape, layout", CASES, ids=str)
def test_custom_matches_autodiff_and_numpy(shape, layout):
    """Forward bit for bit; the VJP of y, mean and var under random cotangents."""
    x, scale, bias, cts = make_args(shape, layout, seed=len(shape))
    out = {}
    for grad in ("custom", "autodiff"):

        def f(x, s, b, grad=grad):
            return ops.batch_norm(x, s, b, layout=layout, grad=grad)

        y, pullback = jax.vjp(f, x, scale, bias)
        out[grad] = (y, pullback(cts))
    (y, grads), (y_ref, grads_ref) = out["custom"], out["autodiff"]
    for a, b in zip(y, y_ref):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(grads, grads_ref):
        assert_close(a, b, 1e-12)
    for a, b in zip(y, np_batch_norm(*map(np.asarray, (x, scale, bias)), layout)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_finite_differences_to_second_order():
    x, scale, bias, _ = make_args((2, 3, 3, 2), "NCHW", seed=5)
    f = jax.jit(lambda x, s, b: ops.batch_norm(x, s, b, grad="custom"))
    check_grads(f, (x, scale, bias), order=2, modes=["rev"])


def _runs_custom_rule(layer, grad, x) -> bool:
    """Whether the BatchNorm's training forward runs batch_norm's custom VJP."""
    _, params, state = layer.init(jax.random.PRNGKey(0), x.shape)
    jaxpr = jax.make_jaxpr(
        lambda p: layer.apply(p, state, x, train=True, grad=grad)[0]
    )(params)
    return "batch_norm_custom" in str(jaxpr)


@pytest.mark.parametrize(
    "grad, custom",
    [
        ("custom", True),
        ("autodiff", False),
        ("feedback_alignment", True),  # not a ruled op: keeps its exact rule
        ({"*batchnorm": "autodiff", "*": "custom"}, False),
        ({"*dense": "autodiff"}, True),  # no key for its path
    ],
    ids=str,
)
def test_layer_backward_follows_grad(grad, custom):
    model = funcnn.serial(funcnn.BatchNorm(), funcnn.Flatten(), funcnn.Dense(2))
    x = jnp.ones((2, 3, 2, 2), jnp.float32)
    assert _runs_custom_rule(model, grad, x) == custom


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.ones((2, 3, 4)), scale=np.ones(3), bias=np.ones(3)), "rank 2"),
        (dict(x=np.ones((2, 3), int), scale=np.ones(3), bias=np.ones(3)), "float"),
        (dict(x=np.ones((2, 3)), scale=np.ones(2), bias=np.ones(3)), "scale of shape"),
        (dict(x=np.ones((2, 3, 1, 1)), scale=np.ones(3), bias=np.ones(3), eps=0),
         "eps > 0"),
        (dict(x=np.ones((2, 3)), scale=np.ones(3), bias=np.ones(3), grad="x"),
         "grad to be one of"),
        (dict(x=np.ones((2, 3, 1, 1)), scale=np.ones(3), bias=np.ones(3),
              layout="CHWN"), "layout"),
    ],
)  # fmt: skip
def test_errors(kwargs, match):
    kwargs = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
              for k, v in kwargs.items()}  # fmt: skip
    x, scale, bias = kwargs.pop("x"), kwargs.pop("scale"), kwargs.pop("bias")
    with pytest.raises((ValueError, TypeError), match=match):
        ops.batch_norm(x, scale, bias, **kwargs)

"""Forward-mode autodiff through the hand-written rules (funcnn.ops._vjp).

In grad="custom" mode, jax.jvp, jax.linearize, jax.jacfwd, jax.hessian and the
forward-over-reverse Hessian-vector product must equal grad="autodiff" mode (JAX's
own derivatives of the plain-lax forward), while reverse mode still runs the
hand-written rules and the rule values; without the experimental JAX API, the
fallback keeps reverse mode and names the op. All in float64.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, fast_jit

from funcnn import ops, rules
from funcnn.nn.models import lenet, resnet20
from funcnn.ops import _vjp
from funcnn.training.losses import softmax_cross_entropy

F64 = jnp.float64
RTOL = 1e-10

# On a JAX other than pyproject's pin, where the experimental API is missing,
# forward mode raises by design (the fallback test below): skip what needs it,
# except under CI=true, which installs the pin.
needs_forward_mode = pytest.mark.skipif(
    not _vjp.forward_mode_available() and os.environ.get("CI") != "true",
    reason=f"forward mode through the rules is unavailable on JAX {jax.__version__}",
)


def rand(seed, shape):
    # numpy's generator: jax.random would compile once per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)


def _scalar(op, ct):
    """A scalar with a non-zero Hessian even where op is (piecewise) linear."""
    return lambda *a: jnp.vdot(ct, jnp.tanh(op(*a)))


def _derivatives(op, args, tangents, ct):
    """Everything forward mode computes of `op` at `args`, and the two HVPs."""
    argnums = tuple(range(len(args)))
    y, dy = jax.jvp(op, args, tangents)
    y_lin, f_lin = jax.linearize(op, *args)
    s = _scalar(op, ct)
    grad_s = jax.grad(s, argnums)
    return {
        "y": y,
        "jvp": dy,
        "linearize": (y_lin, f_lin(*tangents)),
        "jacfwd": jax.jacfwd(op, argnums)(*args),
        "hessian": jax.hessian(s, argnums)(*args),
        "hvp_fwd_rev": jax.jvp(grad_s, args, tangents)[1],
        "hvp_rev_rev": jax.grad(
            lambda *a: sum(jnp.vdot(g, t) for g, t in zip(grad_s(*a), tangents)),
            argnums,
        )(*args),
    }


def _assert_trees_close(got, want, rtol=RTOL):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(a, b, rtol)


def _x(shape=(1, 2, 5, 5)):
    return rand(0, shape)


def _nhwc(a):
    return jnp.transpose(a, (0, 2, 3, 1))


_IDX = ops.max_pool2d(_x(), 2, return_indices=True)[1]


def _bn_all(out):
    y, mean, var = out
    return y + (mean * var)[None, :, None, None]


# (id, op(grad, *args), args); small, so that each Hessian stays under 100^2.
OP_CASES = [
    (
        "conv2d s2 p1 d2 g2",
        lambda g, x, w, b: ops.conv2d(
            x, w, b, stride=2, padding=1, dilation=2, groups=2, grad=g
        ),
        (_x(), rand(1, (4, 1, 2, 2)), rand(2, (4,))),
    ),
    (
        "conv2d NHWC s(2,1) p(1,2) g2",
        lambda g, x, w, b: ops.conv2d(
            x, w, b, stride=(2, 1), padding=(1, 2), groups=2, layout="NHWC", grad=g
        ),
        (_nhwc(_x()), rand(1, (2, 1, 3, 3)), rand(2, (2,))),
    ),
    (
        "conv2d patches",  # C_in*KH*KW <= 32: the im2col formulation
        lambda g, x, w: ops.conv2d(x, w, padding=1, grad=g),
        (_x(), rand(1, (2, 2, 3, 3))),
    ),
    (
        "max_pool2d 3/2 p1 (overlapping)",
        lambda g, x: ops.max_pool2d(x, 3, stride=2, padding=1, grad=g),
        (_x(),),
    ),
    (
        "max_pool2d 2/1 d2 (dilated)",
        lambda g, x: ops.max_pool2d(x, 2, stride=1, dilation=2, grad=g),
        (_x(),),
    ),
    (
        "max_pool2d NHWC return_indices",
        lambda g, x: ops.max_pool2d(x, 2, return_indices=True, layout="NHWC", grad=g)[
            0
        ],
        (_nhwc(_x()),),
    ),
    (
        "avg_pool2d 3/2 p1",
        lambda g, x: ops.avg_pool2d(x, 3, stride=2, padding=1, grad=g),
        (_x(),),
    ),
    ("avg_pool2d 2", lambda g, x: ops.avg_pool2d(x, 2, grad=g), (_x(),)),
    (
        "dense",
        lambda g, x, w, b: ops.dense(x, w, b, grad=g),
        (rand(0, (3, 6)), rand(1, (4, 6)), rand(2, (4,))),
    ),
    (
        "conv_transpose2d s2 p1 op1 g2",
        lambda g, x, w, b: ops.conv_transpose2d(
            x, w, b, stride=2, padding=1, output_padding=1, groups=2, grad=g
        ),
        (_x((1, 2, 3, 3)), rand(1, (2, 1, 3, 3)), rand(2, (2,))),
    ),
    (
        "adaptive_avg_pool2d 5->3",
        lambda g, x: ops.adaptive_avg_pool2d(x, 3, grad=g),
        (_x(),),
    ),
    (
        "adaptive_max_pool2d 5->(3,2)",
        lambda g, x: ops.adaptive_max_pool2d(x, (3, 2), grad=g),
        (_x(),),
    ),
    (
        "batch_norm (y, mean, var)",  # all three outputs reach the scalar
        lambda g, x, s, b: _bn_all(ops.batch_norm(x, s, b, grad=g)),
        (_x((3, 2, 3, 3)), rand(1, (2,)), rand(2, (2,))),
    ),
    (
        "batch_norm NHWC",
        lambda g, x, s, b: ops.batch_norm(x, s, b, layout="NHWC", grad=g)[0],
        (_nhwc(_x((3, 2, 3, 3))), rand(1, (2,)), rand(2, (2,))),
    ),
    (
        "max_unpool2d",
        lambda g, y: ops.max_unpool2d(y, _IDX, 2, output_size=(5, 5), grad=g),
        (rand(3, (1, 2, 2, 2)),),
    ),
]


@needs_forward_mode
@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_forward_mode_equals_autodiff_mode(case):
    """jvp, linearize, jacfwd, hessian and the HVP in custom mode equal autodiff
    mode's; in custom mode forward-over-reverse equals reverse-over-reverse."""
    _, op, args = case
    tangents = tuple(rand(10 + i, a.shape) for i, a in enumerate(args))
    ct = rand(20, jax.eval_shape(partial(op, "autodiff"), *args).shape)
    got, want = (
        fast_jit(lambda *a, g=g: _derivatives(partial(op, g), a, tangents, ct))(*args)
        for g in ("custom", "autodiff")
    )
    _assert_trees_close(got, want)
    _assert_trees_close(got["hvp_fwd_rev"], got["hvp_rev_rev"])
    # tanh makes the Hessian non-zero, so the comparison can tell rules apart.
    assert float(jnp.max(jnp.abs(got["hessian"][0][0]))) > 0


@needs_forward_mode
def test_integer_outputs_get_float0_tangents():
    """max_pool2d's indices: the same value under jvp, and a float0 tangent."""
    x = _x()
    pool = partial(ops.max_pool2d, window=2, stride=1, return_indices=True)
    y, idx = pool(x)
    (y1, idx1), (dy, didx) = jax.jvp(pool, (x,), (rand(1, x.shape),))
    np.testing.assert_array_equal(idx1, idx)
    assert_close(y1, y, 0)
    assert didx.dtype == jax.dtypes.float0 and didx.shape == idx.shape
    want = jax.jvp(lambda x: pool(x, grad="autodiff")[0], (x,), (rand(1, x.shape),))
    assert_close(dy, want[1], RTOL)


# ----------------------------------------------------------------- whole models


def _model_derivatives(model, params, state, x, y, v, grad, leaf, full):
    """jvp of the logits in all parameters v, and the hessian of the loss in the
    parameter `leaf` (layer, name). With `full`, also the jacfwd of the logits in
    `leaf` and the loss HVP in v, forward-over-reverse and reverse-over-reverse."""

    def logits(p):
        return model.apply(p, state, x, grad=grad)[0]

    def loss(p):
        return softmax_cross_entropy(logits(p), y)

    layer, name = leaf

    def at_leaf(f):
        return lambda a: f({**params, layer: {**params[layer], name: a}})

    out = {
        "jvp": jax.jvp(logits, (params,), (v,)),
        "hessian": jax.hessian(at_leaf(loss))(params[layer][name]),
    }
    if full:
        vdot = lambda a, b: sum(map(jnp.vdot, jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
        out["jacfwd"] = jax.jacfwd(at_leaf(logits))(params[layer][name])
        out["hvp_fwd_rev"] = jax.jvp(jax.grad(loss), (params,), (v,))[1]
        out["hvp_rev_rev"] = jax.grad(lambda p: vdot(jax.grad(loss)(p), v))(params)
    return out


@needs_forward_mode
@pytest.mark.parametrize(
    "make, shape, leaf, full",
    [
        (partial(lenet, 3, input_hw=(12, 12)), (2, 1, 12, 12), ("00_conv", "b"), True),
        # Every extra would add seconds of compile time; each op's own are above,
        # and a hessian is forward-over-reverse already.
        (partial(resnet20, 3), (2, 3, 8, 8), ("01_batchnorm", "scale"), False),
    ],
    ids=["lenet", "resnet20"],
)
def test_whole_model_forward_mode_equals_autodiff_mode(make, shape, leaf, full):
    """Custom mode against autodiff mode, in a first-layer leaf so that its
    tangents cross every layer; on lenet, forward-over-reverse against
    reverse-over-reverse too."""
    model = make()
    # One compiled init, cast inside: eagerly, each new shape would compile.
    params, state = jax.jit(
        lambda k: jax.tree.map(lambda a: a.astype(F64), model.init(k, shape)[1:])
    )(jax.random.PRNGKey(0))
    x, y = rand(1, shape), jnp.arange(shape[0]) % 3
    v = jax.tree.map(lambda a: rand(2, a.shape), params)
    got, want = (
        fast_jit(lambda *a, g=g: _model_derivatives(model, *a, g, leaf, full))(
            params, state, x, y, v
        )
        for g in ("custom", "autodiff")
    )
    if full:
        _assert_trees_close(got["hvp_fwd_rev"], got["hvp_rev_rev"], 1e-9)
    _assert_trees_close(got, want, 1e-9)


# --------------------------------------------- reverse mode still runs the rules


@needs_forward_mode
def test_feedback_alignment_reverse_mode_is_B_based_and_forward_mode_plain():
    """Under a feedback-alignment rule value, jax.grad's dX is the exact dX with
    W replaced by B (JAX's own VJP of the plain conv at weights B), not W's; in
    the same program, jax.jvp is the plain conv's tangent."""
    x, w, b = _x((2, 2, 5, 5)), rand(1, (3, 2, 3, 3)), rand(2, (3,))
    B, g, t = rand(3, w.shape), rand(4, (2, 3, 5, 5)), rand(5, x.shape)
    fa = rules.feedback_alignment(feedback=B)

    def plain(x, w):
        return ops.conv2d(x, w, b, padding=1, grad="autodiff")

    def both(x, w, B):
        fa_op = lambda x, w: ops.conv2d(  # noqa: E731
            x, w, b, padding=1, grad=rules.feedback_alignment(feedback=B)
        )
        dx = jax.vjp(fa_op, x, w)[1](g)[0]
        return dx, jax.jvp(fa_op, (x, w), (t, w))[1]

    dx, dy = fast_jit(both)(x, w, B)
    assert repr(fa).startswith("FeedbackAlignment(")
    assert_close(dx, jax.vjp(plain, x, B)[1](g)[0], RTOL)
    assert not np.allclose(dx, jax.vjp(plain, x, w)[1](g)[0])
    assert_close(dy, jax.jvp(plain, (x, w), (t, w))[1], RTOL)


@dataclasses.dataclass(frozen=True)
class _Exact(rules.Rule):
    """A rule value that overrides nothing, so every op takes its ruled VJP."""

    ops = rules.RULED_OPS


@needs_forward_mode
def test_every_ruled_vjp_runs_forward_mode():
    """conv2d, dense, max_pool2d and avg_pool2d under a rule value (the VJPs of
    funcnn.ops.ruled): jvp and its transpose equal autodiff mode's."""
    x, w, v = _x((1, 2, 4, 4)), rand(1, (3, 2, 3, 3)), rand(2, (3, 32))
    cases = [
        (lambda g, x: ops.conv2d(x, w, padding=1, grad=g), x),
        (lambda g, x: ops.dense(x, v, grad=g), x.reshape(1, -1)),
        (lambda g, x: ops.max_pool2d(x, 3, stride=1, padding=1, grad=g), x),
        (lambda g, x: ops.avg_pool2d(x, 3, stride=1, padding=1, grad=g), x),
    ]
    for op, a in cases:
        t = rand(3, a.shape)

        def jvp_and_transpose(g, op=op, a=a, t=t):
            f = partial(op, g)
            _, f_lin = jax.linearize(f, a)
            return jax.jvp(f, (a,), (t,)), jax.linear_transpose(f_lin, a)(f(a))

        got, want = (
            fast_jit(partial(jvp_and_transpose, g))() for g in (_Exact(), "autodiff")
        )
        _assert_trees_close(got, want)


# --------------------------------------------------------------- the mechanism


def _cube_op(tangent=None):
    """A declared op with a deliberately non-exact rule: bwd gives 2 * 3x^2 g, so
    reverse mode shows the rule ran; its forward is x^3 * k."""

    @partial(_vjp.custom_vjp, nondiff_argnums=(1,))
    def cube(x, k):
        return k * x**3

    cube.defvjp(
        lambda x, k: (k * x**3, x),
        lambda k, x, g: (2 * 3 * k * x**2 * g,),
        tangent=tangent,
    )
    return cube


@needs_forward_mode
def test_declared_op_runs_bwd_in_reverse_mode_and_the_forward_in_forward_mode():
    x, t = jnp.array([1.0, 2.0, -3.0], F64), jnp.array([0.5, -1.0, 2.0], F64)
    cube = _cube_op()
    assert_close(jax.grad(lambda x: cube(x, 2.0).sum())(x), 2 * 6 * x**2, 0)
    y, dy = jax.jvp(lambda x: cube(x, 2.0), (x,), (t,))
    assert_close(y, 2 * x**3, 0)
    assert_close(dy, 6 * x**2 * t, RTOL)
    # vmap outside and inside each mode (the op batched by VJPHiPrimitive).
    xs = jnp.stack([x, 2 * x])
    per_row = jax.vmap(jax.grad(lambda x: cube(x, 2.0).sum()))(xs)
    assert_close(per_row, 2 * 6 * xs**2, 0)
    batched = jax.grad(lambda xs: jax.vmap(lambda x: cube(x, 2.0))(xs).sum())(xs)
    assert_close(batched, 2 * 6 * xs**2, 0)
    ts = jnp.stack([t, -t])
    dys = jax.jvp(jax.vmap(lambda x: cube(x, 2.0)), (xs,), (ts,))[1]
    assert_close(dys, 6 * xs**2 * ts, RTOL)
    assert_close(jax.jacfwd(lambda x: cube(x, 2.0))(x), jnp.diag(6 * x**2), RTOL)
    # Where JAX differentiates through the tangent (jax.checkpoint, a transposed
    # linearize), and inside lax.scan, reverse mode still runs the rule.
    remat = jax.grad(jax.checkpoint(lambda x: cube(x, 2.0).sum()))(x)
    assert_close(remat, 2 * 6 * x**2, 0)
    _, f_lin = jax.linearize(lambda x: cube(x, 2.0), x)
    assert_close(f_lin(t), 6 * x**2 * t, RTOL)
    assert_close(jax.linear_transpose(f_lin, x)(t)[0], 2 * 6 * x**2 * t, 0)
    scanned = jax.grad(
        lambda x: jax.lax.scan(lambda c, r: (c + cube(r, 2.0), None), 0.0, x)[0]
    )(x)
    assert_close(scanned, 2 * 6 * x**2, 0)


@needs_forward_mode
def test_tangent_gives_forward_mode_another_function():
    """The physical-system use (funcnn.ops.custom_vjp for a Physical layer): the
    forward is numpy code on the host, a rounded cube plus noise drawn from a key
    (the "system"); reverse and forward mode differentiate the smooth cube (its
    digital twin) at the same input."""

    def twin(x, key, k):
        del key
        return k * x**3

    def on_host(x, k):
        return np.round(k * np.asarray(x) ** 3)

    @partial(_vjp.custom_vjp, nondiff_argnums=(2,))
    def system(x, key, k):
        out = jax.ShapeDtypeStruct(x.shape, x.dtype)
        measured = jax.pure_callback(partial(on_host, k=k), out, x)
        return measured + 0.01 * jax.random.normal(key, x.shape, x.dtype)

    system.defvjp(
        lambda x, key, k: (system.fun(x, key, k), x),
        lambda k, x, g: (jax.vjp(lambda x: twin(x, None, k), x)[1](g)[0], None),
        tangent=twin,
    )
    x, t, key = (
        jnp.array([1.1, 2.2], F64),
        jnp.array([1.0, -2.0], F64),
        jax.random.key(3),
    )
    noise = 0.01 * jax.random.normal(key, x.shape, F64)
    f = fast_jit(
        lambda x, t: (
            system(x, key, 2.0),
            jax.jvp(lambda x: system(x, key, 2.0), (x,), (t,)),
        )
    )
    y, (y_jvp, dy) = f(x, t)
    assert_close(y, on_host(x, 2.0) + noise, 0)
    assert_close(y_jvp, y, 0)
    assert_close(dy, 6 * x**2 * t, RTOL)
    y_lin, f_lin = jax.linearize(lambda x: system(x, key, 2.0), x)
    assert_close(y_lin, y, 0)
    assert_close(f_lin(t), dy, RTOL)
    assert_close(jax.grad(lambda x: system(x, key, 2.0).sum())(x), 6 * x**2, RTOL)


@needs_forward_mode
def test_declaration_errors():
    cube = _vjp.custom_vjp(lambda x: x**3)
    with pytest.raises(AttributeError, match=r"<lambda>: expected defvjp\(fwd, bwd\)"):
        cube(jnp.ones(2))
    cube.defvjp(lambda x: (x**3, x), lambda x, g: (g, g))
    with pytest.raises(ValueError, match="expected bwd to return a tuple of 1 "):
        jax.grad(lambda x: cube(x).sum())(jnp.ones(2))
    cube.defvjp(lambda x: (x**3, x), lambda x, g: (g[:1],))
    with pytest.raises(ValueError, match=r"cotangent of shape \(2,\) and dtype"):
        jax.grad(lambda x: cube(x).sum())(jnp.ones(2))


# ------------------------------------------------------------- the fallback


@pytest.fixture
def fallback(monkeypatch):
    """As on a JAX without a working VJPHiPrimitive: the self-test fails."""

    def broken():
        raise ImportError("no hijax here")

    monkeypatch.setattr(_vjp, "_state", {})
    monkeypatch.setattr(_vjp, "_make_primitive_classes", broken)
    assert not _vjp.forward_mode_available()


def test_fallback_keeps_reverse_mode_and_names_the_op_in_forward_mode(fallback):
    x, w, g = _x(), rand(1, (2, 2, 3, 3)), rand(2, (1, 2, 5, 5))

    def conv(x, w, grad="custom"):
        return ops.conv2d(x, w, padding=1, grad=grad)

    def loss(x, grad="custom"):
        return jnp.vdot(g, jnp.tanh(conv(x, w, grad)))

    def reverse(grad):
        # The rule's VJP, under jax.checkpoint, and the HVP (second order went
        # through jax.custom_vjp before, and still does).
        return (
            jax.vjp(partial(conv, grad=grad), x, w)[1](g),
            jax.grad(jax.checkpoint(partial(loss, grad=grad)))(x),
            jax.jvp(jax.grad(partial(loss, grad=grad)), (x,), (g,))[1],
        )

    reverse = fast_jit(reverse, static_argnums=0)
    _assert_trees_close(reverse("custom"), reverse("autodiff"))
    msg = (
        r"conv2d_patches_custom: expected forward-mode autodiff .* unavailable: "
        r"ImportError: no hijax here\. Reverse mode is unchanged"
    )
    for transform in (
        lambda: jax.jvp(conv, (x, w), (x, w)),
        lambda: jax.jacfwd(conv)(x, w),
        lambda: jax.linearize(conv, x, w),
    ):
        with pytest.raises(NotImplementedError, match=msg):
            transform()
    # Autodiff mode does not pass through a declared op: forward mode works.
    jax.jvp(partial(conv, grad="autodiff"), (x, w), (x, w))

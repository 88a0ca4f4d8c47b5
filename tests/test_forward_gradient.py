"""Tests for forward gradients (`funcnn.rules.forward_gradient`): one direction
gives `(dL . v) v` with `dL` from reverse-mode `jax.grad` (independent of the
jvp); the mean over many directions approaches the exact gradient (unbiased);
the train step's update is SGD's on that estimate, and its program holds no
backward pass (no transposed convolution, no max-pool scatter); the errors where
a per-op rule is needed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close

import funcnn
from funcnn import rules
from funcnn.training.forward_grad import draw_directions, forward_value_and_grad

pytestmark = pytest.mark.usefixtures("release_compiled")


def small_cnn():
    return funcnn.serial(
        funcnn.Conv2D(3, 3, stride=2, padding=1),
        funcnn.Relu(),
        funcnn.MaxPool2D(2),
        funcnn.Flatten(),
        funcnn.Dense(4),
    )


def batch(n=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    return x, (np.arange(n) % 4).astype(np.int32)


def objective(model, state, x, y, grad):
    def f(params):
        out, _ = model.apply(params, state, x, grad=grad)
        return funcnn.softmax_cross_entropy(out, y), out

    return f


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def test_one_direction_is_the_directional_derivative_times_v():
    model = small_cnn()
    _, params, state = model.init(jax.random.key(0), (-1, 1, 8, 8))
    x, y = batch()
    key = jax.random.key(1)

    @jax.jit
    def both(params):
        (loss, out), g, dots = forward_value_and_grad(
            objective(model, state, x, y, "autodiff"),
            params,
            key,
            rules.forward_gradient(),
        )
        exact_loss, exact = jax.value_and_grad(
            lambda p: objective(model, state, x, y, "custom")(p)[0]
        )(params)
        v = jax.tree_util.tree_map(lambda a: a[0], draw_directions(key, params, 1))
        return loss, g, dots, exact_loss, exact, v

    loss, g, dots, exact_loss, exact, v = both(params)
    assert_close(loss, exact_loss, 1e-6)
    dot = float(np.vdot(flat(exact), flat(v)))
    assert_close(dots, [dot], 1e-5)
    jax.tree_util.tree_map(lambda a, b: assert_close(a, dot * b, 1e-5), g, v)


def test_mean_over_many_directions_approaches_the_gradient():
    model = funcnn.serial(funcnn.Dense(4), funcnn.Tanh(), funcnn.Dense(2))
    _, params, state = model.init(jax.random.key(0), (-1, 3))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)

    @jax.jit
    def both(params):
        f = objective(model, state, x, y, "autodiff")
        rule = rules.forward_gradient(4000)
        _, estimate, _ = forward_value_and_grad(f, params, jax.random.key(3), rule)
        exact = jax.grad(lambda p: objective(model, state, x, y, "custom")(p)[0])
        return estimate, exact(params)

    got, exact = map(flat, both(params))
    cosine = np.vdot(got, exact) / np.linalg.norm(got) / np.linalg.norm(exact)
    assert cosine > 0.95, cosine


def step_of(model, grad):
    opt = optax.sgd(0.5)
    state = funcnn.create_train_state(model, (-1, 1, 8, 8), opt, seed=4)
    return state, funcnn.make_train_step(model, opt, grad=grad, jit=False)


def test_train_step_is_sgd_on_the_estimate():
    model = small_cnn()
    state, step = step_of(model, "forward_gradient")
    x, y = batch()

    @jax.jit
    def run(state):
        # The step's key, as make_train_step splits it; the directions fold in 1.
        step_key = jax.random.split(state.key)[1]
        v = draw_directions(jax.random.fold_in(step_key, 1), state.params, 1)
        loss, exact = jax.value_and_grad(
            lambda p: objective(model, state.model_state, x, y, "custom")(p)[0]
        )(state.params)
        return step(state, (x, y)), loss, exact, v

    (new, metrics), loss, exact, v = run(state)
    v = jax.tree_util.tree_map(lambda a: a[0], v)
    dot = float(np.vdot(flat(exact), flat(v)))
    assert_close(metrics["loss"], loss, 1e-6)
    jax.tree_util.tree_map(
        lambda new, old, v: assert_close(new, old - 0.5 * dot * v, 1e-5),
        new.params,
        state.params,
        v,
    )


def conv_and_pool_equations(jaxpr):
    """Every equation of a jaxpr and the jaxprs nested in it."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                yield from conv_and_pool_equations(getattr(inner, "jaxpr", inner))


def backward_ops(step, state, xy) -> list[str]:
    """The ops of a backward pass in the step's program: a convolution that is not
    the forward's (its rhs not a 3x3 filter, or lhs dilation from a stride), a
    kernel flip, a max-pool scatter, a custom VJP."""
    jaxpr = jax.make_jaxpr(step)(state, xy).jaxpr
    found = []
    for eqn in conv_and_pool_equations(jaxpr):
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            if rhs[2:] != (3, 3) or eqn.params["lhs_dilation"] != (1, 1):
                found.append(f"conv with rhs {rhs}")
        elif name in ("rev", "select_and_scatter_add") or "custom_vjp" in name:
            found.append(name)
    return found


def test_the_step_runs_no_backward_pass():
    x, y = batch()
    for grad in ("forward_gradient", rules.forward_gradient(3)):
        state, step = step_of(small_cnn(), grad)
        assert backward_ops(step, state, (x, y)) == []
    # The check sees backprop's weight-gradient convolution and pool scatter.
    state, step = step_of(small_cnn(), "autodiff")
    assert backward_ops(step, state, (x, y))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, p, s, xy: funcnn.conv2d(xy[0], jnp.ones((2, 1, 3, 3)),
                                           grad="forward_gradient"),
         "conv2d: expected grad to be a rule for each op"),
        (lambda m, p, s, xy: m.apply(p, s, xy[0], grad=rules.forward_gradient()),
         "Conv2D: expected grad to be a rule for each op"),
        (lambda m, p, s, xy: funcnn.make_train_step(
            m, optax.sgd(1.0), grad={"*conv*": "forward_gradient", "*": "custom"}),
         "make_train_step: expected grad at key '\\*conv\\*' to be a rule for each"),
        (lambda m, p, s, xy: funcnn.backward_trace(m, p, s, xy,
                                                   grad="forward_gradient"),
         "backward_trace: expected grad to be a rule for each op"),
        (lambda m, p, s, xy: funcnn.make_train_step(
            m, optax.sgd(1.0), grad="forward_gradient", layer_stats=True),
         "expected layer_stats=False and alignment=False"),
        (lambda m, p, s, xy: rules.forward_gradient(0),
         "directions to be an int >= 1, got 0"),
    ],
)  # fmt: skip
def test_errors_where_a_per_op_rule_is_needed(call, match):
    model = small_cnn()
    params, state = jax.eval_shape(
        lambda: model.init(jax.random.key(0), (-1, 1, 8, 8))[1:]
    )  # shapes suffice: every error is raised before any array is read
    with pytest.raises(ValueError, match=match):
        call(model, params, state, batch())

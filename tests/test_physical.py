"""Tests for funcnn.Physical (physics-aware training): the forward is the system's
output bit for bit (a JAX system with its noise key, numpy code under jit); the
gradients are jax.vjp of the twin at the same input, computed independently; a
rule given to the twin (feedback alignment) runs in the backward, checked against
a straight-through re-implementation `twin(x) + stop_gradient(system(x) -
twin(x))` written here; second derivatives and vmap of a host system; the trace,
checkpoints and combinators; PAT reaching a target that in-silico training
misses (PAT's 2x^1.1 toy); and the error messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close
from jax import lax

import funcnn
from funcnn import rules
from funcnn.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("release_compiled")

X_SHAPE = (2, 2, 5, 5)
GAIN = 1.0 + 0.1 * np.random.default_rng(7).standard_normal((3, 2, 3, 3))


def device(params, x, key=None):
    """A noisy analog conv: fixed per-weight gains, saturation, read noise."""
    w = params["w"] * jnp.asarray(GAIN, params["w"].dtype)
    y = funcnn.conv2d(x, w, params["b"], padding=1, grad="autodiff")
    y = 1.5 * jnp.tanh(y / 1.5)
    if key is not None:
        y = y + 0.05 * jax.random.normal(key, y.shape, y.dtype)
    return y


def host_device(params, x):
    """The same device without noise, in numpy (float32 throughout)."""
    w = (params["w"] * GAIN).astype(np.float32)
    y = np.asarray(funcnn.conv2d(x, w, params["b"], padding=1, grad="autodiff"))
    return (1.5 * np.tanh(y / 1.5)).astype(np.float32)


def linear(params, x):
    return x @ params["w"].T + params["b"]


def twin_conv():
    return funcnn.Conv2D(3, 3, padding=1)


def straight_through(system, twin):
    """An independent PAT layer: the twin's value plus the stopped gap to the
    system, so every derivative is the twin's at the real input."""

    def apply(params, state, x, *, train=False, key=None, grad="custom", hook=None):
        del hook
        y_twin, _ = twin.apply(params, state, x, train=train, grad=grad)
        stop = lax.stop_gradient
        return y_twin + stop(system(stop(params), stop(x)) - y_twin), state

    return funcnn.Layer(twin.init, apply, twin.name, twin.children)


def arrays(seed=0):
    """Conv params and an input, drawn in numpy (no compiles)."""
    rng = np.random.default_rng(seed)
    params = {
        "w": rng.normal(0, 0.3, (3, 2, 3, 3)).astype(np.float32),
        "b": rng.normal(0, 0.1, (3,)).astype(np.float32),
    }
    return params, rng.standard_normal(X_SHAPE).astype(np.float32)


def test_forward_is_the_system_output_bit_for_bit():
    layer = funcnn.Physical(device, twin_conv())
    params, x = arrays()
    key = jax.random.key(3)
    k_system = jax.random.split(key)[0]  # the documented split
    run = jax.jit(lambda p, x, k: layer.apply(p, {}, x, key=k)[0])
    system = jax.jit(device)
    np.testing.assert_array_equal(run(params, x, key), system(params, x, k_system))
    # Without a key the system runs with its default (no noise here).
    got = jax.jit(lambda p, x: layer.apply(p, {}, x)[0])(params, x)
    np.testing.assert_array_equal(got, system(params, x))


def test_host_forward_is_the_numpy_output_under_jit():
    model = funcnn.serial(
        funcnn.Physical(host_device, twin_conv(), host=True), funcnn.Relu()
    )
    params, x = arrays()
    state = {"00_conv": {}, "01_relu": {}}
    model_params = {"00_conv": params, "01_relu": {}}
    got = jax.jit(lambda p, x: model.apply(p, state, x)[0])(model_params, x)
    np.testing.assert_array_equal(got, np.maximum(host_device(params, x), 0))


@pytest.mark.parametrize("host", [False, True])
def test_gradients_are_the_twin_vjp_at_the_real_input(host):
    layer = funcnn.Physical(host_device if host else device, twin_conv(), host=host)
    twin = twin_conv()
    params, x = arrays()
    g = np.random.default_rng(5).standard_normal((2, 3, 5, 5)).astype(np.float32)

    @jax.jit
    def pullbacks(params, x, g):
        def pullback(f):
            return jax.vjp(lambda p, x: f(p, x)[0], params, x)[1](g)

        return (
            pullback(lambda p, x: layer.apply(p, {}, x)),
            pullback(lambda p, x: twin.apply(p, {}, x, grad="autodiff")),
            pullback(lambda p, x: (device(p, x),)),
        )

    (dp, dx), (dp_twin, dx_twin), (_, dx_system) = pullbacks(params, x, g)
    assert_close(dx, dx_twin, 1e-5)
    for name in ("w", "b"):
        assert_close(dp[name], dp_twin[name], 1e-5)
    # ... and not the system's own gradient (the device saturates, the twin not).
    assert not np.allclose(dx, dx_system, rtol=1e-2)


def dense_models(rule_layer):
    def dev(params, x):
        return jnp.tanh(funcnn.dense(x, 1.1 * params["w"], params["b"]))

    return funcnn.serial(rule_layer(dev, funcnn.Dense(5)), funcnn.Dense(3))


def test_a_rule_given_to_the_twin_runs_in_the_backward():
    physical = dense_models(funcnn.Physical)
    reference = dense_models(straight_through)
    _, params, state = physical.init(jax.random.key(0), (4, 6))
    x = jax.random.normal(jax.random.key(1), (4, 6), jnp.float32)
    g = jax.random.normal(jax.random.key(2), (4, 3), jnp.float32)

    fa = rules.feedback_alignment(seed=4)

    @jax.jit
    def all_grads(params, x):
        def grads(model, grad):
            def f(p, x):
                return jnp.vdot(model.apply(p, state, x, grad=grad)[0], g)

            return jax.grad(f, argnums=(0, 1))(params, x)

        return grads(physical, fa), grads(reference, fa), grads(physical, "custom")

    (dp, dx), (dp_ref, dx_ref), (_, dx_exact) = all_grads(params, x)
    assert_close(dx, dx_ref, 1e-5)
    assert_close(dp["00_dense"]["w"], dp_ref["00_dense"]["w"], 1e-5)
    assert not np.allclose(dx, dx_exact, rtol=1e-2)
    # The B each layer uses is the twin model's, drawn from the same paths.
    plain = funcnn.serial(funcnn.Dense(5), funcnn.Dense(3))
    b = rules.feedback_weights(physical, params, fa)
    b_plain = rules.feedback_weights(plain, params, fa)
    assert sorted(b) == sorted(b_plain) == ["00_dense", "01_dense"]
    np.testing.assert_array_equal(b["00_dense"], b_plain["00_dense"])


def test_a_combinator_twin_keeps_its_layer_paths():
    """A twin of two layers: mappings address its inner layers, whose paths
    (and feedback weights) are those of the twin standing at that place."""

    def dev(params, x):
        return jnp.tanh(1.1 * x @ params["00_dense"]["w"].T)

    block = funcnn.serial(funcnn.Dense(5, use_bias=False), funcnn.Tanh())
    physical = funcnn.serial(funcnn.Physical(dev, block), funcnn.Dense(3))
    reference = funcnn.serial(straight_through(dev, block), funcnn.Dense(3))
    assert funcnn.leaf_paths(physical) == [
        "00_serial/00_dense", "00_serial/01_tanh", "01_dense"
    ]  # fmt: skip
    _, params, state = physical.init(jax.random.key(0), (4, 6))
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    grad = {"00_serial/00_dense": rules.feedback_alignment(seed=2), "*": "custom"}

    @jax.jit
    def both(params):
        def dx(model):
            f = lambda x: jnp.sum(model.apply(params, state, x, grad=grad)[0] ** 2)  # noqa: E731
            return jax.grad(f)(x)

        return dx(physical), dx(reference)

    got, expected = both(params)
    assert_close(got, expected, 1e-5)
    with pytest.raises(ValueError, match="00_serial/00_conv"):
        physical.apply(params, state, x, grad={"00_serial/00_conv": "custom"})


def test_host_second_derivatives_and_vmap():
    layer = funcnn.Physical(host_device, twin_conv(), host=True)
    params, x = arrays()

    def host_call(p, x):
        return jax.pure_callback(
            host_device, jax.ShapeDtypeStruct((2, 3, 5, 5), x.dtype), p, x
        )

    reference = straight_through(host_call, twin_conv())

    def grad_norm(model):
        def loss(x):
            return jnp.sum(model.apply(params, {}, x, grad="autodiff")[0] ** 2)

        return lambda x: jnp.sum(jax.grad(loss)(x) ** 2)

    # Reverse over reverse: every derivative of the system is the twin's.
    got, ref = jax.jit(
        lambda x: (jax.grad(grad_norm(layer))(x), jax.grad(grad_norm(reference))(x))
    )(x)
    assert_close(got, ref, 1e-5)
    # vmap: the host system runs once per mapped element.
    ws = np.stack([params["w"], 2 * params["w"]])
    batched = jax.jit(jax.vmap(lambda w: layer.apply(dict(params, w=w), {}, x)[0]))(ws)
    for i in range(2):
        expected = host_device(dict(params, w=ws[i]), x)
        np.testing.assert_array_equal(batched[i], expected)


def test_trace_checkpoint_and_combinators(tmp_path):
    def model_of(conv):
        parts = funcnn.branches(conv, funcnn.Identity())
        return funcnn.serial(parts, funcnn.Concat(), funcnn.Flatten(), funcnn.Dense(2))

    model = model_of(funcnn.Physical(device, twin_conv()))
    twin_model = model_of(twin_conv())
    _, params, state = model.init(jax.random.key(0), X_SHAPE)
    _, twin_params, _ = twin_model.init(jax.random.key(0), X_SHAPE)
    # The params are the twin model's: same keys, same values from the same key.
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, twin_params)
    save_checkpoint(tmp_path / "twin.safetensors", twin_params)
    loaded, _ = load_checkpoint(tmp_path / "twin.safetensors", like=params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    x = arrays()[1]
    y = jnp.asarray([0, 1])
    conv = params["00_branches"]["00_conv"]

    @jax.jit
    def run(params):
        trace = funcnn.backward_trace(model, params, state, (x, y))
        layer = trace["00_branches/00_conv"]
        twin_delta = jax.vjp(lambda x: twin_conv().apply(conv, {}, x)[0], x)[1]
        return trace, device(conv, x), twin_delta(layer.delta_out)[0]

    trace, measured, twin_delta = run(params)
    layer = trace["00_branches/00_conv"]
    assert_close(layer.output, measured, 1e-6)
    assert_close(trace["00_branches/01_identity"].output, x, 0)
    assert_close(layer.delta_in, twin_delta, 1e-5)


def power(scale):
    """The toy's layer: `scale * x ** theta`, theta initialised to 1.1."""

    def init(key, shape):
        del key
        return shape, {"theta": jnp.asarray(1.1, jnp.float32)}, {}

    def apply(params, state, x, **_):
        return scale * x ** params["theta"], state

    return funcnn.Layer(init, apply, "power")


def test_pat_reaches_a_target_that_in_silico_training_misses():
    """PAT's toy (its example 3): the system is 2x^theta, the twin 2.01x^theta, a
    chain of 5; the target is the system's output at theta = 1.12."""
    depth, x = 5, jnp.asarray([1.5], jnp.float32)

    def system(params, x):
        return 2.0 * x ** params["theta"]

    pat = funcnn.serial(*[funcnn.Physical(system, power(2.01)) for _ in range(depth)])
    in_silico = funcnn.serial(*[power(2.01) for _ in range(depth)])
    _, params, state = pat.init(jax.random.key(0), (1,))
    target = pat.apply(jax.tree_util.tree_map(lambda t: t + 0.02, params), state, x)[0]

    def train(model):
        def loss(p):
            y = model.apply(p, state, x)[0]
            return jnp.sum((jnp.log(y) - jnp.log(target)) ** 2)

        @jax.jit
        def step(p):
            return jax.tree_util.tree_map(
                lambda a, b: a - 2e-3 * b, p, jax.grad(loss)(p)
            )

        p = params
        for _ in range(60):
            p = step(p)
        return float(abs(pat.apply(p, state, x)[0][0] / target[0] - 1))

    assert train(pat) < 1e-4 < 2e-2 < train(in_silico)


def test_forward_mode_gives_the_measured_output_and_the_twins_tangent():
    # jax.jvp through the layer: the primal is the system's output, the tangent
    # the twin's jvp at the real input (computed here from the twin in autodiff
    # mode), not the system's own derivative.
    def bent(params, x):  # a system unlike its twin, Dense
        return jnp.tanh(linear(params, x))

    twin = funcnn.Dense(3)
    layer = funcnn.Physical(bent, twin)
    _, params, state = layer.init(jax.random.key(0), (2, 4))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)
    dx = jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)
    y, dy = jax.jvp(lambda x: layer.apply(params, state, x)[0], (x,), (dx,))
    assert_close(y, bent(params, x), 0)
    _, twin_dy = jax.jvp(
        lambda x: twin.apply(params, state, x, grad="autodiff")[0], (x,), (dx,)
    )
    assert_close(dy, twin_dy, 1e-6)
    _, system_dy = jax.jvp(lambda x: bent(params, x), (x,), (dx,))
    assert not np.allclose(dy, system_dy, atol=1e-3)


def wrong_shape(params, x):
    return linear(params, x)[:, :2]


def wrong_dtype(params, x):
    return np.asarray(linear(params, x), np.float64)


def not_finite(params, x):
    return linear(params, x) / 0.0


def host_not_finite(params, x):
    return np.full_like(np.asarray(linear(params, x)), np.nan)


def needs_key(params, x, key):
    return linear(params, x) + jax.random.normal(key, (2, 3))


@pytest.mark.parametrize(
    "system, host, jit, error, match",
    [
        (wrong_shape, False, False, ValueError,
         r"at layer '00_dense'.*\(2, 3\) float32.*got \(2, 2\) float32"),
        (wrong_shape, False, True, ValueError, r"\(2, 3\) float32.*got \(2, 2\)"),
        (wrong_dtype, True, True, jax.errors.JaxRuntimeError,
         r"at layer '00_dense'.*got \(2, 3\) float64.*astype"),
        (not_finite, False, False, ValueError, "at layer '00_dense'.*NaN or inf"),
        (not_finite, False, True, jax.errors.JaxRuntimeError,
         "at layer '00_dense'.*NaN or inf"),
        (host_not_finite, True, True, jax.errors.JaxRuntimeError,
         "at layer '00_dense'.*NaN or inf"),
        (needs_key, False, False, ValueError, "at layer '00_dense'.*key=None"),
    ],
)  # fmt: skip
def test_system_errors_name_the_layer(system, host, jit, error, match):
    model = funcnn.serial(funcnn.Physical(system, funcnn.Dense(3), host=host))
    _, params, state = model.init(jax.random.key(0), (2, 4))
    x = np.ones((2, 4), np.float32)

    def run(p, x):
        return model.apply(p, state, x)[0]

    with pytest.raises(error, match=match):
        jax.block_until_ready((jax.jit(run) if jit else run)(params, x))


def test_unchecked_nonfinite_output_is_a_skipped_step():
    model = funcnn.serial(
        funcnn.Physical(not_finite, funcnn.Dense(3), check=False), funcnn.Dense(2)
    )
    opt = optax.sgd(0.1)
    state = funcnn.create_train_state(model, (2, 4), opt)
    step = funcnn.make_train_step(model, opt, donate=False)
    x = np.ones((2, 4), np.float32)
    new, metrics = step(state, (x, np.array([0, 1], np.int32)))
    assert float(metrics["nonfinite"]) == 1.0
    jax.tree_util.tree_map(np.testing.assert_array_equal, new.params, state.params)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: funcnn.Physical(device, "conv"), TypeError, "expected a funcnn Layer"),
        (lambda: funcnn.Physical(None, twin_conv()), TypeError, "callable system"),
        (lambda: funcnn.Physical(device, funcnn.BatchNorm()).init(
            jax.random.key(0), (2, 3, 4, 4)), ValueError, "without state"),
    ],
)  # fmt: skip
def test_construction_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()

"""Tests for clear errors at the API level: the train step's eager checks
(batch, labels, donated state), optimizer and train-state arguments, and ops that
take the same numpy inputs eagerly as under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import (
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Relu,
    avg_pool2d,
    conv2d,
    create_train_state,
    make_optimizer,
    make_schedule,
    make_train_step,
    max_pool2d,
    serial,
)

SHAPE = (-1, 1, 6, 6)


def tiny():
    return serial(
        Conv2D(2, 3, padding="SAME"), Relu(), MaxPool2D(2), Flatten(), Dense(4)
    )


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, 1, 6, 6)).astype(np.float32),
        rng.integers(0, 4, n).astype(np.int32),
    )


@pytest.fixture(scope="module")
def setup():
    model = tiny()
    opt = make_optimizer("sgd", 0.1)
    kept = make_train_step(model, opt, donate=False)
    donating = make_train_step(model, opt)
    return model, opt, kept, donating


# --------------------------------------------------------------------------
# The train step's eager checks.


@pytest.mark.parametrize(
    ("bad_batch", "error", "message"),
    [
        (lambda x, y: x, TypeError, r"batch = \(x, y\).*got ndarray of shape"),
        (lambda x, y: (x,), TypeError, r"got a tuple of 1 items"),
        (lambda x, y: (x, y, y), TypeError, r"got a tuple of 3 items"),
        (lambda x, y: (x[:0], y[:0]), ValueError, r"at least one example.*\(0, 1, 6"),
        (lambda x, y: (x, y.astype(np.float32)), TypeError, r"integer class labels"),
        (lambda x, y: (x, y[:3]), ValueError, r"shape \(N,\) = \(4,\), got \(3,\)"),
        (
            lambda x, y: (x, np.eye(4, dtype=np.int32)[y]),
            ValueError,
            r"got \(4, 4\)\. Pass class indices, not one-hot rows",
        ),
        (lambda x, y: (x, list(y)), TypeError, r"arrays x and y .* ndarray and list"),
    ],
)
def test_train_step_rejects_bad_batches_before_tracing(
    setup, bad_batch, error, message
):
    model, opt, step, _ = setup
    state = create_train_state(model, SHAPE, opt)
    x, y = batch()
    size = step._cache_size()
    with pytest.raises(error, match=r"^train_step: expected .*" + message):
        step(state, bad_batch(x, y))
    # Raised in Python before jax saw the call: nothing was traced or compiled.
    assert step._cache_size() == size


def test_train_step_rejects_a_state_of_another_type(setup):
    model, opt, step, _ = setup
    state = create_train_state(model, SHAPE, opt)
    with pytest.raises(TypeError, match=r"expected a TrainState .*got dict"):
        step(state._asdict(), batch())


def test_reusing_a_donated_state_says_what_happened(setup):
    model, opt, kept, step = setup
    state = create_train_state(model, SHAPE, opt)
    new, _ = step(state, batch())
    with pytest.raises(
        ValueError, match=r"buffers an earlier call consumed .*Use the state that"
    ):
        step(state, batch())
    # The returned state works, and gives what a non-donating step gives.
    newer, _ = step(new, batch(seed=1))
    fresh = create_train_state(model, SHAPE, opt)
    expected, _ = kept(kept(fresh, batch())[0], batch(seed=1))
    for a, b in zip(jax.tree.leaves(newer), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checked_step_is_still_the_jitted_function(setup):
    model, opt, step, _ = setup
    state = create_train_state(model, SHAPE, opt)
    compiled = step.lower(state, batch()).compile()
    _, metrics = compiled(state, batch())
    _, direct = step(state, batch())
    assert float(metrics["loss"]) == float(direct["loss"])
    assert "x: images of shape `(N, C, H, W)`" in step.__doc__
    assert "[0, K)" in step.__doc__


# --------------------------------------------------------------------------
# Optimizer and train-state arguments.


def test_optimizer_name_in_place_of_an_optimizer():
    with pytest.raises(
        TypeError, match=r"optax GradientTransformation .*got str 'adam'.*make_opt"
    ):
        create_train_state(tiny(), SHAPE, "adam")
    with pytest.raises(TypeError, match=r"make_train_step: expected an optax"):
        make_train_step(tiny(), "sgd")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"learning_rate": np.inf},
            ValueError,
            r"learning_rate in \(0, inf\), got inf",
        ),
        (
            {"learning_rate": np.nan},
            ValueError,
            r"learning_rate in \(0, inf\), got nan",
        ),
        ({"learning_rate": "0.1"}, TypeError, r"learning_rate to be a number, got str"),
        ({"weight_decay": np.nan}, ValueError, r"weight_decay in \[0, inf\), got nan"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay in \[0, inf\), got -0.1"),
        ({"weight_decay": np.inf}, ValueError, r"weight_decay in \[0, inf\), got inf"),
        ({"b1": 1.5}, ValueError, r"b1 in \[0, 1\), got 1.5"),
        ({"b2": 1.0}, ValueError, r"b2 in \[0, 1\), got 1.0"),
        ({"b1": -0.1}, ValueError, r"b1 in \[0, 1\)"),
        ({"momentum": 5}, ValueError, r"momentum in \[0, 1\), got 5"),
        ({"momentum": np.nan}, ValueError, r"momentum in \[0, 1\), got nan"),
        ({"eps": -1e-8}, ValueError, r"eps in \(0, inf\), got -1e-08"),
        ({"eps": 0.0}, ValueError, r"eps in \(0, inf\), got 0.0"),
        ({"eps": np.inf}, ValueError, r"eps in \(0, inf\)"),
        ({"clip_norm": np.inf}, ValueError, r"clip_norm in \(0, inf\), got inf"),
        ({"clip_norm": np.nan}, ValueError, r"clip_norm in \(0, inf\)"),
        ({"momentum": True}, TypeError, r"momentum to be a number, got bool"),
        ({"warmup_steps": 2.5}, TypeError, r"warmup_steps to be an int, got float"),
    ],
)
def test_make_optimizer_rejects_values_outside_their_range(kwargs, error, message):
    args = {"learning_rate": 0.1} | kwargs
    with pytest.raises(error, match=r"^make_(optimizer|schedule): expected " + message):
        make_optimizer("adam", **args)


def test_make_optimizer_accepts_the_edges_of_each_range():
    opt = make_optimizer(
        "adam", 1e-3, weight_decay=0.0, momentum=0.0, b1=0.0, b2=0.0, clip_norm=1e30
    )
    params = {"w": jnp.ones((2, 2))}
    updates, _ = opt.update({"w": jnp.full((2, 2), 2.0)}, opt.init(params), params)
    # b1 = b2 = 0: Adam's step is lr * g / (|g| + eps) = 1e-3 per entry.
    np.testing.assert_allclose(updates["w"], -1e-3 * 2 / (2 + 1e-8), rtol=1e-6)


def test_make_schedule_rejects_bad_boundaries_and_factor():
    with pytest.raises(ValueError, match=r"each step boundary in \(0, 1\), got 1.5"):
        make_schedule(0.1, "step", total_steps=10, step_boundaries=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"step_factor in \(0, inf\), got nan"):
        make_schedule(0.1, "step", total_steps=10, step_factor=np.nan)


# --------------------------------------------------------------------------
# Eager calls take the inputs a jitted call takes.


# The jitted side is traced (jax.eval_shape), not compiled: tracing runs the same
# checks and gives the dtypes, and compiling would only cost time.


def test_eager_apply_takes_numpy_float64_like_the_jitted_apply():
    model = serial(Conv2D(2, 3), Flatten(), Dense(3))
    with jax.enable_x64(False):
        _, params, state = model.init(jax.random.PRNGKey(0), SHAPE)
        x64 = np.random.default_rng(0).standard_normal((3, 1, 6, 6))
        eager, _ = model.apply(params, state, x64)
        traced, _ = jax.eval_shape(model.apply, params, state, x64)
        as_f32, _ = model.apply(params, state, x64.astype(np.float32))
    assert eager.dtype == traced.dtype == jnp.float32
    np.testing.assert_array_equal(eager, as_f32)


@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "avg_pool2d"])
def test_ops_give_eager_numpy_inputs_jit_dtypes(op):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    call = {
        "conv2d": lambda x: conv2d(x, w),
        "max_pool2d": lambda x: max_pool2d(x, 2),
        "avg_pool2d": lambda x: avg_pool2d(x, 2),
    }[op]
    with jax.enable_x64(False):
        eager = call(x)
        traced = jax.eval_shape(call, x)
        expected = call(jnp.asarray(x, jnp.float32))
    assert eager.dtype == traced.dtype == jnp.float32
    np.testing.assert_array_equal(eager, expected)

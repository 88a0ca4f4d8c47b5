"""Tests for funcnn.training (step, optim): steps against optax applied by hand,
custom vs autodiff backward rules, non-finite skipping, donation, exact eval
aggregation and every optimizer and schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcnn import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    Relu,
    mse,
    serial,
    softmax_cross_entropy,
)
from funcnn.training.checkpoint import load_checkpoint, save_checkpoint
from funcnn.training.optim import (
    OPTIMIZERS,
    learning_rate,
    make_optimizer,
    make_schedule,
)
from funcnn.training.step import (
    TrainState,
    create_train_state,
    evaluate,
    make_eval_step,
    make_train_step,
)

SHAPE = (-1, 1, 6, 6)


def tiny(batchnorm=False, dropout=0.0):
    """conv - [bn] - relu - pool - flatten - [dropout] - dense, for (N, 1, 6, 6)."""
    return serial(
        Conv2D(3, 3, padding="SAME", use_bias=not batchnorm),
        *([BatchNorm()] if batchnorm else []),
        Relu(),
        MaxPool2D(2),
        Flatten(),
        *([Dropout(dropout)] if dropout else []),
        Dense(4),
    )


def batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 4, n).astype(np.int32)
    return x, y


def tree_equal(a, b):
    return all(
        np.array_equal(np.asarray(u), np.asarray(v))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_state_fields_and_dtypes():
    opt = make_optimizer("adam", 1e-2)
    state = create_train_state(tiny(), SHAPE, opt, seed=3)
    assert isinstance(state, TrainState)
    assert state.step.shape == () and state.step.dtype == jnp.int32
    assert state.key.shape == (2,) and state.key.dtype == jnp.uint32
    assert set(state.params) == {
        "00_conv",
        "01_relu",
        "02_maxpool",
        "03_flatten",
        "04_dense",
    }
    again = create_train_state(tiny(), SHAPE, opt, seed=3)
    assert tree_equal(state, again)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_step_equals_optax_applied_by_hand(name):
    model = tiny(batchnorm=True)
    opt = make_optimizer(name, 0.05, weight_decay=1e-3)
    state = create_train_state(model, SHAPE, opt, seed=0)
    x, y = batch()

    def loss(params):
        out, new_state = model.apply(
            params, state.model_state, jnp.asarray(x), train=True, grad="autodiff"
        )
        return softmax_cross_entropy(out, jnp.asarray(y)), new_state

    (value, model_state), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, _ = opt.update(grads, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)

    step = make_train_step(model, opt, jit=True, donate=False)
    new, metrics = step(state, (x, y))
    assert max_diff(new.params, expected) < 1e-6
    assert max_diff(new.model_state, model_state) < 1e-6
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    assert int(new.step) == 1 and metrics["nonfinite"] == 0.0


def test_loss_decreases_and_jit_matches_unjitted():
    model = tiny()
    opt = make_optimizer("adam", 1e-2)
    x, y = batch(1, 32)
    jitted = make_train_step(model, opt, donate=False)
    plain = make_train_step(model, opt, jit=False)
    a = b = create_train_state(model, SHAPE, opt, seed=1)
    losses = []
    for _ in range(20):
        a, ma = jitted(a, (x, y))
        b, mb = plain(b, (x, y))
        losses.append(float(ma["loss"]))
        np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    assert max_diff(a.params, b.params) < 1e-5
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_custom_and_autodiff_steps_agree(loss):
    model = tiny(batchnorm=True, dropout=0.3)
    opt = make_optimizer("momentum", 0.05)
    states = {}
    for grad in ("custom", "autodiff"):
        step = make_train_step(model, opt, loss=loss, grad=grad, donate=False)
        state = create_train_state(model, SHAPE, opt, seed=2)
        for i in range(5):
            state, _ = step(state, batch(i))
        states[grad] = state
    assert max_diff(states["custom"].params, states["autodiff"].params) < 1e-5
    assert tree_equal(states["custom"].key, states["autodiff"].key)


def test_mse_loss_is_the_library_mse_of_one_hot_targets():
    model = tiny()
    opt = optax.sgd(0.0)
    state = create_train_state(model, SHAPE, opt)
    x, y = batch()
    _, metrics = make_train_step(model, opt, loss="mse", donate=False)(state, (x, y))
    out, _ = model.apply(state.params, state.model_state, jnp.asarray(x))
    expected = mse(out, jax.nn.one_hot(y, 4))
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)


def test_label_smoothing_matches_optax_smoothed_targets():
    model = tiny()
    opt = optax.sgd(0.0)
    state = create_train_state(model, SHAPE, opt)
    x, y = batch()
    step = make_train_step(model, opt, label_smoothing=0.2, donate=False)
    _, metrics = step(state, (x, y))
    out, _ = model.apply(state.params, state.model_state, jnp.asarray(x))
    targets = optax.smooth_labels(jax.nn.one_hot(y, 4), 0.2)
    expected = optax.softmax_cross_entropy(out, targets).mean()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="expected 0 <= label_smoothing < 1"):
        make_train_step(model, opt, label_smoothing=1.0)
    with pytest.raises(ValueError, match="expected loss='cross_entropy'"):
        make_train_step(model, opt, loss="mse", label_smoothing=0.1)


@pytest.mark.parametrize("bad", ["nan_input", "inf_label_loss"])
def test_nonfinite_step_is_skipped_and_flagged(bad):
    model = tiny(batchnorm=True)
    opt = make_optimizer("adam", 1e-2)
    step = make_train_step(model, opt, donate=False)
    state = create_train_state(model, SHAPE, opt)
    state, _ = step(state, batch(0))
    x, y = batch(1)
    if bad == "nan_input":
        x[3, 0, 2, 2] = np.nan
    else:
        x[0] = 1e38  # overflows the logits to inf
    new, metrics = step(state, (x, y))
    assert float(metrics["nonfinite"]) == 1.0
    assert tree_equal(new.params, state.params)
    assert tree_equal(new.model_state, state.model_state)
    assert tree_equal(new.opt_state, state.opt_state)
    assert int(new.step) == int(state.step) + 1
    # A good batch afterwards trains normally.
    after, metrics = step(new, batch(2))
    assert float(metrics["nonfinite"]) == 0.0
    assert not tree_equal(after.params, new.params)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(after))


def test_donation_consumes_the_old_state_only_when_asked():
    model = tiny()
    opt = make_optimizer("sgd", 0.1)
    state = create_train_state(model, SHAPE, opt)
    kept = make_train_step(model, opt, donate=False)
    new, _ = kept(state, batch())
    assert not state.params["00_conv"]["w"].is_deleted()
    donated = make_train_step(model, opt, donate=True)
    expected, _ = kept(new, batch(1))
    newer, _ = donated(new, batch(1))
    assert new.params["00_conv"]["w"].is_deleted()
    assert tree_equal(newer.params, expected.params)


def test_dropout_key_is_split_in_the_step():
    model = tiny(dropout=0.5)
    opt = make_optimizer("sgd", 0.1)
    step = make_train_step(model, opt, donate=False)
    state = create_train_state(model, SHAPE, opt, seed=4)
    x, y = batch()
    s1, m1 = step(state, (x, y))
    s1_again, _ = step(state, (x, y))
    _, m2 = step(s1._replace(params=state.params), (x, y))
    expected_key, _ = jax.random.split(state.key)
    assert tree_equal(s1.key, expected_key)
    assert tree_equal(s1, s1_again)
    # The same params see a different dropout mask at the next step.
    assert float(m1["loss"]) != float(m2["loss"])


@pytest.mark.parametrize("n, batch_size", [(23, 7), (23, 23), (5, 64)])
def test_evaluate_covers_every_example_exactly(n, batch_size):
    model = tiny(batchnorm=True)
    state = create_train_state(model, SHAPE, optax.sgd(0.1), seed=5)
    x, y = batch(7, n)
    eval_step = make_eval_step(model)
    got = evaluate(eval_step, state, x, y, batch_size)
    out, _ = model.apply(state.params, state.model_state, jnp.asarray(x))
    correct = int(np.sum(np.argmax(np.asarray(out), -1) == y))
    assert got["count"] == n and got["correct"] == correct
    assert got["accuracy"] == correct / n
    np.testing.assert_allclose(got["loss"], softmax_cross_entropy(out, y), rtol=1e-6)
    whole = eval_step(state, (x, y))
    assert float(whole["count"]) == n and int(whole["correct"]) == correct


def test_eval_mask_ignores_padding_even_if_nan():
    model = tiny()
    state = create_train_state(model, SHAPE, optax.sgd(0.1))
    x, y = batch(0, 4)
    x[3] = np.nan
    sums = make_eval_step(model)(state, (x, y, np.array([1, 1, 1, 0], np.float32)))
    clean = make_eval_step(model)(state, (x[:3], y[:3]))
    np.testing.assert_allclose(sums["loss_sum"], clean["loss_sum"], rtol=1e-6)
    assert float(sums["count"]) == 3.0


# Each optimizer once, the schedules taking turns (each pair compiles a step).
@pytest.mark.parametrize(
    "name, schedule",
    [(n, ("constant", "cosine", "step")[i % 3]) for i, n in enumerate(OPTIMIZERS)],
)
def test_every_optimizer_and_schedule_trains(name, schedule):
    model = tiny()
    opt = make_optimizer(
        name, 0.01, weight_decay=1e-4, schedule=schedule, total_steps=8, warmup_steps=2
    )
    rate = make_schedule(0.01, schedule, total_steps=8, warmup_steps=2)
    step = make_train_step(model, opt, donate=False)
    state = first = create_train_state(model, SHAPE, opt)
    for i in range(4):
        state, metrics = step(state, batch(i))
        np.testing.assert_allclose(metrics["lr"], rate(i), rtol=1e-6)
        assert float(metrics["nonfinite"]) == 0.0
    assert not tree_equal(state.params, first.params)
    np.testing.assert_allclose(learning_rate(state.opt_state), rate(3), rtol=1e-6)


def test_weight_decay_reaches_kernels_only():
    model = tiny()
    opt = make_optimizer("sgd", 0.5, weight_decay=0.1)
    plain = make_optimizer("sgd", 0.5)
    state = create_train_state(model, SHAPE, opt)
    x, y = batch()
    decayed, _ = make_train_step(model, opt, donate=False)(state, (x, y))
    undecayed, _ = make_train_step(model, plain, donate=False)(
        state._replace(opt_state=plain.init(state.params)), (x, y)
    )
    for layer in ("00_conv", "04_dense"):
        w = state.params[layer]["w"]
        np.testing.assert_allclose(
            decayed.params[layer]["w"],
            undecayed.params[layer]["w"] - 0.5 * 0.1 * w,
            atol=1e-6,
        )
        np.testing.assert_array_equal(
            decayed.params[layer]["b"], undecayed.params[layer]["b"]
        )


def test_schedules_by_hand():
    cos = make_schedule(1.0, "cosine", total_steps=10)
    np.testing.assert_allclose([cos(0), cos(5), cos(10)], [1.0, 0.5, 0.0], atol=1e-6)
    stepped = make_schedule(1.0, "step", total_steps=8)
    np.testing.assert_allclose(
        [stepped(3), stepped(4), stepped(6)], [1.0, 0.1, 0.01], rtol=1e-6
    )
    warm = make_schedule(1.0, "constant", warmup_steps=4)
    np.testing.assert_allclose([warm(0), warm(2), warm(4), warm(9)], [0, 0.5, 1, 1])


def test_train_state_round_trips_through_a_checkpoint(tmp_path):
    model = tiny(batchnorm=True)
    opt = make_optimizer("adam", 1e-2, schedule="cosine", total_steps=10)
    state = create_train_state(model, SHAPE, opt)
    state, _ = make_train_step(model, opt, donate=False)(state, batch())
    save_checkpoint(tmp_path / "s.safetensors", state, {"step": 1})
    template = create_train_state(model, SHAPE, opt, seed=9)
    loaded, meta = load_checkpoint(tmp_path / "s.safetensors", like=template)
    assert meta == {"step": 1} and tree_equal(loaded, state)
    assert jax.tree.structure(loaded) == jax.tree.structure(state)


def test_errors_name_the_bad_value():
    model = tiny()
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="expected grad to be one of"):
        make_train_step(model, opt, grad="numeric")
    with pytest.raises(ValueError, match="expected loss in"):
        make_train_step(model, opt, loss="hinge")
    with pytest.raises(ValueError, match="expected name in"):
        make_optimizer("lbfgs", 0.1)
    with pytest.raises(ValueError, match="expected total_steps > warmup_steps"):
        make_optimizer("adam", 0.1, schedule="cosine")
    with pytest.raises(ValueError, match="expected learning_rate > 0"):
        make_schedule(-1.0)
    with pytest.raises(TypeError, match="expected a funcnn Layer"):
        create_train_state(lambda x: x, SHAPE, opt)
    with pytest.raises(ValueError, match="expected N >= 1 images"):
        evaluate(make_eval_step(model), None, np.zeros((0, 1, 6, 6)), np.zeros(0), 4)

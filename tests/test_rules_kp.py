"""Tests for Kolen-Pollack's learned feedback weights in the train state: B starts
as feedback alignment's B, gets W's update (so W - B is kept by Adam and shrinks
by exactly (1 - lr * wd) per plain SGD step under weight decay), round-trips
through a checkpoint bit for bit, and a state that does not fit the model or the
rule is refused."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, rule_model

import funcnn
from funcnn import rules
from funcnn.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("release_compiled")

KP = "kolen_pollack"


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((4, 1, 6, 6)).astype(np.float32), rng.integers(0, 4, 4))
        for _ in range(n)
    ]


def differences(state):
    return {p: state.params[p]["w"] - b for p, b in state.feedback.items()}


def test_b_starts_as_feedback_alignments_and_shrinks_towards_w_under_decay():
    model = rule_model()
    lr, wd = 0.05, 0.1
    opt = funcnn.make_optimizer("sgd", lr, weight_decay=wd)
    state = funcnn.create_train_state(model, (-1, 1, 6, 6), opt, grad=KP)
    fa = rules.feedback_weights(model, state.params, "feedback_alignment")
    assert list(state.feedback) == ["00_conv", "04_dense", "06_dense"]
    for path, b in state.feedback.items():
        np.testing.assert_array_equal(b, fa[path])
    step = funcnn.make_train_step(model, opt, grad=KP, donate=False)
    before = differences(state)
    for batch in batches(4):
        new, _ = step(state, batch)
        # One plain SGD step with decay: W - B -> (1 - lr * wd) (W - B), since
        # both get the same gradient dW.
        for path, diff in differences(new).items():
            assert_close(diff, (1 - lr * wd) * differences(state)[path], 1e-5)
        state = new
    for path, diff in differences(state).items():
        ratio = np.linalg.norm(diff) / np.linalg.norm(before[path])
        assert ratio == pytest.approx((1 - lr * wd) ** 4, rel=1e-4)
    # The state's B is the one the layers use, and feedback_weights reports it.
    shown = rules.feedback_weights(model, state, KP)
    for path, b in state.feedback.items():
        np.testing.assert_array_equal(shown[path], b)


def test_b_gets_the_same_adam_update_as_w():
    model = rule_model()
    opt = funcnn.make_optimizer("adam", 1e-2)
    state = funcnn.create_train_state(model, (-1, 1, 6, 6), opt, grad=KP, seed=2)
    step = funcnn.make_train_step(model, opt, grad=KP, donate=False)
    start = differences(state)
    new = state
    for batch in batches(3, seed=1):
        new, _ = step(new, batch)
    for path, diff in differences(new).items():
        assert not np.allclose(new.feedback[path], state.feedback[path])
        assert_close(diff, start[path], 1e-5)


def test_b_round_trips_through_a_checkpoint_bit_for_bit(tmp_path):
    model = rule_model()
    opt = funcnn.make_optimizer("momentum", 0.05, weight_decay=1e-3)
    state = funcnn.create_train_state(model, (-1, 1, 6, 6), opt, grad=KP)
    step = funcnn.make_train_step(model, opt, grad=KP, donate=False)
    data = batches(4, seed=2)
    for batch in data[:2]:
        state, _ = step(state, batch)
    save_checkpoint(tmp_path / "kp.safetensors", state)
    fresh = funcnn.create_train_state(model, (-1, 1, 6, 6), opt, grad=KP)
    loaded, _ = load_checkpoint(tmp_path / "kp.safetensors", like=fresh)
    for path, b in state.feedback.items():
        np.testing.assert_array_equal(loaded.feedback[path], b)
    for batch in data[2:]:
        state, _ = step(state, batch)
        loaded, _ = step(loaded, batch)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(state)):
        np.testing.assert_array_equal(got, want)


MODEL = rule_model()
OPT = funcnn.make_optimizer("sgd", 0.1)
BATCH = batches(1)[0]
PLAIN = funcnn.create_train_state(MODEL, (-1, 1, 6, 6), OPT)
WITH_B = funcnn.create_train_state(MODEL, (-1, 1, 6, 6), OPT, grad=KP)
OTHER = funcnn.serial(funcnn.Conv2D(2, 3, padding=1), funcnn.Relu(),
                      funcnn.MaxPool2D(2), funcnn.Flatten(), funcnn.Dense(5),
                      funcnn.Relu(), funcnn.Dense(4))  # fmt: skip
OTHER_STATE = funcnn.create_train_state(OTHER, (-1, 1, 6, 6), OPT, grad=KP)
HINT = "Create the state with create_train_state(model, input_shape, optimizer, "


def step_with(state, grad=KP):
    return funcnn.make_train_step(MODEL, OPT, grad=grad, donate=False)(state, BATCH)


ERRORS = [
    (lambda: step_with(PLAIN), ValueError,
     "train_step: expected the state's feedback to hold B for the Kolen-Pollack "
     "layers ['00_conv', '04_dense', '06_dense'], got None. " + HINT),
    (lambda: step_with(WITH_B._replace(feedback={
        **WITH_B.feedback, "00_conv": OTHER_STATE.feedback["00_conv"]})), ValueError,
     "train_step: expected B of layer '00_conv' with w's shape (3, 1, 3, 3) and "
     "dtype float32, got (2, 1, 3, 3) float32."),
    (lambda: step_with(WITH_B, grad={"*dense*": KP, "*": "custom"}), ValueError,
     "train_step: expected the state's feedback to hold B for the Kolen-Pollack "
     "layers ['04_dense', '06_dense'], got ['00_conv', '04_dense', '06_dense']."),
    (lambda: step_with(WITH_B, grad="feedback_alignment"), ValueError,
     "train_step: expected a state without learned feedback weights for "
     "grad='feedback_alignment', got B for ['00_conv', '04_dense', '06_dense']."),
    (lambda: MODEL.apply(PLAIN.params, PLAIN.model_state, jnp.ones((1, 1, 6, 6)),
                         grad=rules.kolen_pollack().bind(feedback={"x": 1})),
     ValueError, "kolen_pollack: expected the train state's feedback to hold B for "
     "layer '00_conv', got B for ['x']."),
]  # fmt: skip


@pytest.mark.parametrize("make, err, message", ERRORS, ids=[e[2][:48] for e in ERRORS])
def test_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()

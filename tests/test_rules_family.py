"""Tests for the random- and sign-feedback rules (feedback alignment's options,
sign symmetry, uSF, brSF, frSF, Kolen-Pollack at op level): each against the
exact VJP of the plain-lax forward with W replaced by the rule's B, where B is
drawn again here from the documented recipe (float64, conv2d with stride,
padding, dilation and groups in both layouts, and dense); brSF's per-step draws,
frSF's fixed magnitudes, the train step's binding of the step, every rule's
deltas in a model, the W-B metrics, jit/layout/bfloat16 agreement, and the
error messages."""

from __future__ import annotations

import hashlib
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, rule_model
from test_rules import CONVS, conv_case, grads, lax_conv, op_vjp, rand

import funcnn
from funcnn import ops, rules

pytestmark = pytest.mark.usefixtures("release_compiled")

F64 = jnp.float64


# ------------------------------------------- B, drawn again from the recipe


def key_of(seed, path, *folds):
    """fold_in(PRNGKey(seed), first 4 bytes of sha256(path), little-endian)."""
    code = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "little")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), np.uint32(code))
    for fold in folds:
        key = jax.random.fold_in(key, np.uint32(fold))
    return key


def draw(init, key, shape, dtype=F64):
    fan_in = math.prod(shape[1:])
    fan_out = shape[0] * math.prod(shape[2:])
    if init in ("layer", "he_normal"):  # op level: He normal
        return jax.random.normal(key, shape, dtype) * math.sqrt(2 / fan_in)
    assert init == "glorot_uniform"
    limit = math.sqrt(6 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def expected_b(rule, w, path=""):
    """The B `rule` uses at the layer `path` ("": op level, with He-normal
    weights), computed from its fields, in w's dtype."""
    s, shape, dtype = jnp.sign(w), w.shape, w.dtype
    if isinstance(rule, rules.SignSymmetry):
        return s
    if isinstance(rule, rules.UniformSignFeedback):
        return rule.gain * math.sqrt(2 / math.prod(shape[1:])) * s
    if isinstance(rule, rules.BatchRandomSignFeedback):
        r = draw(rule.init, key_of(rule.seed, path, rule.step), shape, dtype)
        return rule.gain * jnp.abs(r) * s
    b = rule.gain * draw(rule.init, key_of(rule.seed, path), shape, dtype)
    if isinstance(rule, rules.FixedRandomSignFeedback):
        return jnp.abs(b) * s
    return b  # feedback alignment, Kolen-Pollack before any update


RULES = [
    rules.feedback_alignment(seed=2, init="glorot_uniform", gain=0.5),
    rules.feedback_alignment(seed=1, init="he_normal"),
    rules.sign_symmetry(),
    rules.usf(gain=2.0),
    rules.brsf(seed=3, step=7, init="glorot_uniform"),
    rules.frsf(seed=4, gain=0.3),
    rules.kolen_pollack(seed=5),
]
IDS = ["fa_glorot", "fa_he", "sign", "usf", "brsf", "frsf", "kp"]
NAMES = ["feedback_alignment", "sign_symmetry", "usf", "brsf", "frsf", "kolen_pollack"]


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_conv_rules_send_the_delta_through_b(i):
    """dX is the exact dX with w replaced by B; dW and db are exact; NHWC gives
    the NCHW values transposed."""
    x, w, b, _, g, kw = conv_case(i)
    conv = lax_conv(kw)
    _, dw_exact, db_exact = grads(conv, g, x, w, b)
    to_nhwc, to_nchw = (0, 2, 3, 1), (0, 3, 1, 2)
    named = [rules.registered()[n] for n in NAMES] if i == 0 else []
    for rule in RULES + named:
        want_dx = grads(conv, g, x, expected_b(rule, w), b)[0]
        y, (dx, dw, db) = op_vjp(ops.conv2d, rule, g, x, w, b, **kw)
        assert_close(y, conv(x, w, b), 1e-12)
        assert_close(dx, want_dx, 1e-10)
        assert_close(dw, dw_exact, 1e-10)
        assert_close(db, db_exact, 1e-10)
        if i % 2:  # NHWC on half the geometries keeps the sweep short
            xh, gh = x.transpose(to_nhwc), g.transpose(to_nhwc)
            kh = dict(kw, layout="NHWC")
            _, (dxh, dwh, dbh) = op_vjp(ops.conv2d, rule, gh, xh, w, b, **kh)
            assert_close(dxh.transpose(to_nchw), want_dx, 1e-10)
            assert_close(dwh, dw_exact, 1e-10)
            assert_close(dbh, db_exact, 1e-10)


def test_dense_rules_send_the_delta_through_b():
    rng = np.random.default_rng(3)
    x, w, b, g = (rand(rng, s) for s in ((5, 7), (4, 7), (4,), (5, 4)))

    def dense(x, w, b):
        return x @ w.T + b

    _, dw_exact, db_exact = grads(dense, g, x, w, b)
    for rule in RULES + [rules.registered()[n] for n in NAMES]:
        _, (dx, dw, db) = op_vjp(ops.dense, rule, g, x, w, b)
        assert_close(dx, grads(dense, g, x, expected_b(rule, w), b)[0], 1e-10)
        assert_close(dw, dw_exact, 1e-10)
        assert_close(db, db_exact, 1e-10)


def test_clip_clamps_the_input_delta():
    rng = np.random.default_rng(4)
    x, w, g = rand(rng, (3, 6)), rand(rng, (4, 6)), 3 * rand(rng, (3, 4))
    for rule in (rules.usf(clip=0.25), rules.feedback_alignment(seed=1, clip=0.25)):
        dx = grads(lambda x, r=rule: ops.dense(x, w, grad=r), g, x)[0]
        unclipped = g @ expected_b(rule, w)
        assert np.abs(unclipped).max() > 0.25
        assert_close(dx, jnp.clip(unclipped, -0.25, 0.25), 1e-12)


# ------------------------------------------------------- brSF and frSF


def batches(n, shape=(4, 1, 6, 6), seed=7):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(shape).astype(np.float32), rng.integers(0, 4, shape[0]))
        for _ in range(n)
    ]


def test_brsf_redraws_per_step_and_replays_after_a_resume(tmp_path):
    from funcnn.training.checkpoint import load_checkpoint, save_checkpoint

    model = rule_model()
    opt = funcnn.make_optimizer("sgd", 0.05)
    state0 = funcnn.create_train_state(model, (-1, 1, 6, 6), opt, grad="brsf")
    step = funcnn.make_train_step(model, opt, grad="brsf", donate=False)
    data = batches(3)
    s1, _ = step(state0, data[0])
    s2, _ = step(s1, data[1])
    b1 = rules.feedback_weights(model, s1, "brsf")
    b2 = rules.feedback_weights(model, s2, "brsf")
    for path in ("00_conv", "04_dense"):
        assert not np.allclose(np.abs(b1[path]), np.abs(b2[path]))
        want = expected_b(rules.brsf(step=1), s1.params[path]["w"], path)
        assert_close(b1[path], want, 1e-6)
    # The step used the B of its own step: an SGD update by hand, from the
    # gradient of the model under brsf(step=1), gives the same params.
    x, y = data[1]

    def loss(p):
        out, _ = model.apply(p, s1.model_state, x, train=True, grad=rules.brsf(step=1))
        return funcnn.softmax_cross_entropy(out, y)

    g = jax.grad(loss)(s1.params)
    by_hand = jax.tree.map(lambda p, d: p - 0.05 * d, s1.params, g)
    for got, want in zip(jax.tree.leaves(s2.params), jax.tree.leaves(by_hand)):
        assert_close(got, want, 1e-5)
    # Resumed from a checkpoint of s1, the replayed step is the same, bit for bit.
    save_checkpoint(tmp_path / "s1.safetensors", s1)
    resumed, _ = load_checkpoint(tmp_path / "s1.safetensors", like=state0)
    replayed, _ = step(resumed, data[1])
    for got, want in zip(jax.tree.leaves(replayed), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(got, want)
    b_resumed = rules.feedback_weights(model, resumed, "brsf")
    for path in b1:
        np.testing.assert_array_equal(b_resumed[path], b1[path])


def test_frsf_keeps_its_magnitudes_while_w_changes():
    model = rule_model()
    opt = funcnn.make_optimizer("momentum", 0.1)
    state = funcnn.create_train_state(model, (-1, 1, 6, 6), opt)
    step = funcnn.make_train_step(model, opt, grad="frsf", donate=False)
    before = rules.feedback_weights(model, state.params, "frsf")
    later = state
    for batch in batches(5):
        later, _ = step(later, batch)
    after = rules.feedback_weights(model, later.params, "frsf")
    # B0 is feedback alignment's draw, with frSF's default initializer.
    fa_like = rules.feedback_alignment(init="layer", gain=1.0)
    fa = rules.feedback_weights(model, state.params, fa_like)
    flipped = 0
    for path in before:
        w0, w1 = state.params[path]["w"], later.params[path]["w"]
        assert not np.allclose(w0, w1)
        np.testing.assert_array_equal(np.abs(before[path]), np.abs(after[path]))
        np.testing.assert_array_equal(np.abs(before[path]), np.abs(fa[path]))
        np.testing.assert_array_equal(np.sign(after[path]), np.sign(w1))
        flipped += int(np.sum(np.sign(w0) != np.sign(w1)))
    assert flipped > 0  # some signs moved, and B's signs moved with them


# --------------------------------------------------------- model level


MIXED = {"*dense*": "kolen_pollack", "*": "usf"}
# Mappings that put three rules in one model, so that few compilations cover all.
TRIO_1 = {"00_conv": "frsf", "04_dense": rules.brsf(seed=1, step=3),
          "06_dense": "feedback_alignment", "*": "custom"}  # fmt: skip
TRIO_2 = {"00_conv": "sign_symmetry", "04_dense": "kolen_pollack", "*": "usf"}


@pytest.mark.parametrize(
    "grad", [TRIO_1, TRIO_2, MIXED], ids=["trio1", "trio2", "mixed"]
)
def test_every_layer_sends_its_delta_through_its_b(grad):
    """In a model, each conv and dense layer's input delta (funcnn.backward_trace)
    is the exact VJP of its plain op with W replaced by the B that
    rules.feedback_weights reports, at the delta it received."""
    model = rule_model(F64)
    _, params, state = model.init(jax.random.PRNGKey(1), (-1, 1, 6, 6))
    x = rand(np.random.default_rng(8), (3, 1, 6, 6))
    y = jnp.asarray([0, 3, 1])
    trace = funcnn.backward_trace(model, params, state, (x, y), grad=grad)
    feedback = rules.feedback_weights(model, params, grad)
    assert list(feedback) == ["00_conv", "04_dense", "06_dense"]
    conv = lax_conv({"padding": 1})
    for path, b in feedback.items():
        layer = trace[path]
        p = params[path]
        if path == "00_conv":
            want = grads(conv, layer.delta_out, layer.input, b, p["b"])[0]
        else:
            want = layer.delta_out @ b
        assert_close(layer.delta_in, want, 1e-10)
    if grad is MIXED:  # conv under uSF, dense under Kolen-Pollack's initial B
        w = params["00_conv"]["w"]
        assert_close(feedback["00_conv"], math.sqrt(2 / 9) * jnp.sign(w), 1e-15)
        np.testing.assert_array_equal(
            feedback["06_dense"],
            rules.feedback_weights(model, params, "feedback_alignment")["06_dense"],
        )


def test_weight_angles_and_norm_ratios_are_logged():
    """align_weight/<path> and norm_ratio/<path> against numpy's arccos of the
    cosine and ratio of norms, for W and the B feedback_weights reports."""
    model = rule_model()
    opt = funcnn.make_optimizer("sgd", 0.01)
    grad = {"*dense*": "kolen_pollack", "*": "feedback_alignment"}
    state = funcnn.create_train_state(model, (-1, 1, 6, 6), opt, grad=grad)
    step = funcnn.make_train_step(model, opt, grad=grad, alignment=True, donate=False)
    _, metrics = step(state, batches(1)[0])
    feedback = rules.feedback_weights(model, state, grad)
    for path, b in feedback.items():
        w = np.asarray(state.params[path]["w"], np.float64).ravel()
        b = np.asarray(b, np.float64).ravel()
        cos = w @ b / np.linalg.norm(w) / np.linalg.norm(b)
        assert float(metrics[f"align_weight/{path}"]) == pytest.approx(
            np.degrees(np.arccos(cos)), abs=1e-3
        )
        assert float(metrics[f"norm_ratio/{path}"]) == pytest.approx(
            np.linalg.norm(b) / np.linalg.norm(w), rel=1e-5
        )
    assert {k for k in metrics if k.startswith("norm_ratio/")} == {
        f"norm_ratio/{p}" for p in feedback
    }


TRIO_3 = {"00_conv": "brsf", "04_dense": "frsf", "*": "kolen_pollack"}
TRIO_4 = {"00_conv": "usf", "04_dense": "feedback_alignment", "*": "sign_symmetry"}
JIT_CASES = {
    "trio1": TRIO_3,
    "trio2": TRIO_4,
    "dfa": "direct_feedback_alignment",
    **{name: name for name in NAMES},  # each alone: marked slow below
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(key, marks=[pytest.mark.slow] if key in NAMES else [])
        for key in JIT_CASES
    ],
)
def test_each_rule_trains_alike_under_jit_in_both_layouts_and_bfloat16(name):
    """One jitted train step per layout and compute dtype: NHWC's update equals
    NCHW's (float32), and bfloat16 compute points the same way. Every rule runs
    in one of the unmarked cases (three rules to a model); each alone is slow."""
    grad = JIT_CASES[name]
    batch = batches(1, (4, 1, 6, 6))[0]
    opt = funcnn.make_optimizer("momentum", 0.05, weight_decay=1e-3)
    updates = {}
    for layout, dtype in (("NCHW", None), ("NHWC", None), ("NCHW", jnp.bfloat16)):
        model = rule_model(layout=layout)
        x = batch[0] if layout == "NCHW" else batch[0].transpose(0, 2, 3, 1)
        state = funcnn.create_train_state(
            model, (-1, *x.shape[1:]), opt, seed=3, grad=grad
        )
        step = funcnn.make_train_step(
            model, opt, grad=grad, compute_dtype=dtype, donate=False
        )
        new, metrics = step(state, (x, batch[1]))
        assert float(metrics["nonfinite"]) == 0.0
        moved = (new.params, new.feedback), (state.params, state.feedback)
        updates[layout, dtype] = jax.tree.map(jnp.subtract, *moved)
    ref = updates["NCHW", None]
    for got, want in zip(jax.tree.leaves(updates["NHWC", None]), jax.tree.leaves(ref)):
        assert_close(got, want, 1e-4)
    # bfloat16 compute: the same update direction, to bfloat16's precision.
    assert float(rules.angle(updates["NCHW", jnp.bfloat16], ref)) < 10.0


# ---------------------------------------------------------------- errors


MODEL = rule_model()
OPT = funcnn.make_optimizer("sgd", 0.1)
X = jnp.ones((2, 3), jnp.float32)
W = jnp.ones((4, 3), jnp.float32)

ERRORS = [
    (lambda: ops.conv2d(jnp.ones((1, 1, 4, 4)), jnp.ones((2, 1, 3, 3)),
                        grad="direct_feedback_alignment"), ValueError,
     "conv2d: expected a rule an op can run alone, got DirectFeedbackAlignment("),
    (lambda: funcnn.make_train_step(
        funcnn.serial(funcnn.ConvTranspose2D(2, 3), funcnn.Flatten(),
                      funcnn.Dense(3)), OPT, grad="brsf"), ValueError,
     "make_train_step: expected a rule that supports conv_transpose2d at layer "
     "'00_convtranspose', got BatchRandomSignFeedback("),
    (lambda: rules.brsf(seed=-2), ValueError, "brsf: expected seed >= 0, got -2."),
    (lambda: rules.frsf(init="xavier"), ValueError,
     "frsf: expected init to be one of ('layer', 'he_normal', 'glorot_uniform', "
     "'glorot_normal') or an initializer"),
    (lambda: rules.usf(gain=0), ValueError,
     "usf: expected gain to be a number > 0, got 0."),
    (lambda: rules.sign_symmetry(clip=-1.0), ValueError,
     "sign_symmetry: expected clip to be a number > 0 or None, got -1.0."),
    (lambda: ops.dense(X, W, grad=rules.kolen_pollack(seed=1).bind(
        feedback=jnp.ones((3, 4)))), ValueError,
     "kolen_pollack: expected feedback of w's shape (4, 3) for dense, got (3, 4)."),
]  # fmt: skip


@pytest.mark.parametrize("make, err, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()

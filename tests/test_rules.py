"""Tests for funcnn.rules: feedback alignment and sign symmetry against exact
VJPs of the plain-lax forward with W replaced by B (float64), rule mappings
against a layer-by-layer oracle, fixed B across training and checkpoints, the two
example user rules against hand-computed answers, the alignment angles, and the
error messages."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from jax import lax

import funcnn
from funcnn import ops, rules
from funcnn.rules.examples import QuantizedConv, SplitTies
from funcnn.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("release_compiled")

F64 = jnp.float64
FA, SS = rules.feedback_alignment, rules.sign_symmetry

# (x shape, w shape, conv2d keywords): stride, padding and groups.
CONVS = [
    ((2, 4, 7, 6), (6, 2, 3, 2), dict(stride=(2, 1), padding=((1, 0), (0, 2)),
                                      groups=2)),
    ((1, 3, 6, 6), (4, 3, 3, 3), dict(stride=2, padding=1)),
    ((2, 2, 5, 5), (2, 2, 3, 3), dict(padding="SAME", dilation=2)),
    ((2, 6, 6, 5), (6, 1, 2, 2), dict(stride=(1, 2), groups=6)),
]  # fmt: skip


def rand(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), F64)


def lax_conv(kw):
    """The plain-lax conv, written here from lax with explicit pads."""
    stride = kw.get("stride", 1)
    stride = (stride, stride) if isinstance(stride, int) else stride
    dil = kw.get("dilation", 1)
    dil = (dil, dil) if isinstance(dil, int) else dil
    pad = kw.get("padding", 0)
    if isinstance(pad, int):
        pad = ((pad, pad), (pad, pad))

    def conv(x, w, b):
        y = lax.conv_general_dilated(
            x, w, stride, pad, rhs_dilation=dil,
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=kw.get("groups", 1),
        )  # fmt: skip
        return y + b[None, :, None, None]

    return conv


def conv_case(i):
    xs, ws, kw = CONVS[i]
    rng = np.random.default_rng(i)
    x, w, b, fb = rand(rng, xs), rand(rng, ws), rand(rng, ws[:1]), rand(rng, ws)
    y = lax_conv(kw)(x, w, b)
    return x, w, b, fb, rand(rng, y.shape), kw


def grads(f, g, *args):
    """The VJP of f at args with cotangent g, compiled as one program."""
    return jax.jit(lambda *a: jax.vjp(f, *a)[1](g))(*args)


def op_vjp(op, rule, g, *args, **kw):
    """(y, cotangents) of `op(*args, grad=rule, **kw)` with cotangent g."""
    y, pull = jax.vjp(lambda *a: op(*a, grad=rule, **kw), *args)
    return y, pull(g)


# ------------------------------------------------------------------- op level


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_conv_feedback_alignment_and_sign_symmetry(i):
    """dX is the exact dX with w replaced by B (or sign(w)); dW and db exact."""
    x, w, b, fb, g, kw = conv_case(i)
    conv = lax_conv(kw)
    _, dw_exact, db_exact = grads(conv, g, x, w, b)
    for rule, B in ((FA(feedback=fb), fb), (SS(), jnp.sign(w))):
        y, (dx, dw, db) = op_vjp(ops.conv2d, rule, g, x, w, b, **kw)
        assert_close(y, conv(x, w, b), 1e-12)
        assert_close(dx, grads(conv, g, x, B, b)[0], 1e-10)
        assert_close(dw, dw_exact, 1e-10)
        assert_close(db, db_exact, 1e-10)


@dataclasses.dataclass(frozen=True)
class Exact(rules.Rule):
    """A rule that overrides nothing: every default method is the exact rule."""

    ops = rules.RULED_OPS


def test_dense_feedback_alignment_and_sign_symmetry():
    rng = np.random.default_rng(3)
    x, w, b, fb, g = (rand(rng, s) for s in ((5, 7), (4, 7), (4,), (4, 7), (5, 4)))

    def dense(x, w, b):
        return x @ w.T + b

    _, dw_exact, db_exact = grads(dense, g, x, w, b)
    sign = jnp.sign(w)
    cases = [(FA(feedback=fb), fb), (SS(), sign), ("sign_symmetry", sign)]
    for rule, B in cases + [(Exact(), w)]:
        _, (dx, dw, db) = op_vjp(ops.dense, rule, g, x, w, b)
        assert_close(dx, grads(dense, g, x, B, b)[0], 1e-10)
        assert_close(dw, dw_exact, 1e-10)
        assert_close(db, db_exact, 1e-10)


def test_op_level_feedback_is_drawn_from_seed():
    """Without feedback, the op draws B from (seed, path "") at He scale."""
    rng = np.random.default_rng(4)
    x, w, g = rand(rng, (3, 8)), rand(rng, (5, 8)), rand(rng, (3, 5))
    # FA's defaults: Glorot uniform, std sqrt(2 / (8 + 5)) = 0.39, times 0.5.
    B = rules.draw_feedback(7, "", w.shape, F64, init="glorot_uniform", gain=0.5)
    assert B.shape == w.shape and 0.1 < float(jnp.std(B)) < 0.3
    dx = grads(lambda x: ops.dense(x, w, grad=FA(seed=7)), g, x)[0]
    assert_close(dx, g @ B, 1e-12)
    other = grads(lambda x: ops.dense(x, w, grad=FA(seed=8)), g, x)[0]
    assert not np.allclose(dx, other)


def test_pools_keep_exact_rules_and_rule_arrays_get_zero_gradient():
    rng = np.random.default_rng(5)
    x, gp = rand(rng, (2, 3, 6, 6)), rand(rng, (2, 3, 3, 3))
    for pool in (ops.max_pool2d, ops.avg_pool2d):
        exact = op_vjp(pool, "custom", gp, x, 2)[1][0]
        for rule in ("feedback_alignment", SS()):
            np.testing.assert_array_equal(op_vjp(pool, rule, gp, x, 2)[1][0], exact)
    # A rule is a pytree: jit takes it as an argument, B gets a zero cotangent.
    x, w, b, fb, g, kw = conv_case(1)
    f = jax.jit(lambda x, rule: ops.conv2d(x, w, b, grad=rule, **kw))
    assert_close(f(x, FA(feedback=fb)), lax_conv(kw)(x, w, b), 1e-12)
    d_fb = jax.grad(lambda B: jnp.vdot(ops.conv2d(x, w, grad=FA(feedback=B), **kw), g))
    np.testing.assert_array_equal(d_fb(fb), jnp.zeros_like(fb))


def test_rules_print_their_fields():
    assert repr(FA()) == (
        "FeedbackAlignment(feedback=None, seed=0, init='glorot_uniform', gain=0.5, "
        "clip=None)"
    )
    assert repr(FA(jnp.zeros((2, 3), jnp.float32), 4, init="layer")) == (
        "FeedbackAlignment(feedback=float32[2,3], seed=4, init='layer', gain=0.5, "
        "clip=None)"
    )
    assert repr(SS()) == "SignSymmetry(clip=None)"
    assert repr(QuantizedConv(0.25)) == "QuantizedConv(step=0.25)"
    assert rules.registered()["feedback_alignment"].seed == 0


# ---------------------------------------------------------------- model level


def small_model():
    return funcnn.serial(
        funcnn.Conv2D(3, 3, padding=1, dtype=F64),
        funcnn.Relu(),
        funcnn.Flatten(),
        funcnn.Dense(6, dtype=F64),
        funcnn.Relu(),
        funcnn.Dense(4, dtype=F64),
    )


def test_mapping_changes_only_the_layers_it_matches():
    """FA on "05_dense" only: its dW/db and everything before it are the exact
    VJPs of the plain forward, fed the delta g @ B at 05_dense's input."""
    model = small_model()
    _, params, state = model.init(jax.random.PRNGKey(1), (-1, 1, 5, 5))
    rng = np.random.default_rng(6)
    x, g = rand(rng, (2, 1, 5, 5)), rand(rng, (2, 4))
    grad = {"05_dense": "feedback_alignment", "*": "custom"}
    B = rules.feedback_weights(model, params, grad)
    assert list(B) == ["05_dense"] and B["05_dense"].shape == (4, 6)

    def apply(p, x):
        return model.apply(p, state, x, grad=grad)[0]

    d_params, d_x = grads(apply, g, params, x)

    def head(p, x):  # the plain forward up to the input of 05_dense
        c = p["00_conv"]
        h = lax_conv({"padding": 1})(x, c["w"], c["b"])
        h = jax.nn.relu(h.reshape(h.shape[0], -1))
        return jax.nn.relu(h @ p["03_dense"]["w"].T + p["03_dense"]["b"])

    h = head(params, x)
    want_params, want_x = grads(head, g @ B["05_dense"], params, x)
    for key in ("00_conv", "03_dense"):
        for name in ("w", "b"):
            assert_close(d_params[key][name], want_params[key][name], 1e-10)
    assert_close(d_x, want_x, 1e-10)
    assert_close(d_params["05_dense"]["w"], g.T @ h, 1e-10)
    assert_close(d_params["05_dense"]["b"], g.sum(0), 1e-10)
    # Under "custom" everywhere, the delta goes through W and the head changes.
    d_custom = grads(lambda p: model.apply(p, state, x)[0], g, params)[0]
    assert not np.allclose(d_custom["00_conv"]["w"], d_params["00_conv"]["w"])


def test_feedback_is_fixed_through_training_and_checkpoints(tmp_path):
    model = funcnn.serial(
        funcnn.Conv2D(2, 3, padding=1), funcnn.Relu(), funcnn.Flatten(),
        funcnn.Dense(3),
    )  # fmt: skip
    opt = funcnn.make_optimizer("adam", 1e-2)
    state = funcnn.create_train_state(model, (-1, 1, 4, 4), opt, seed=0)
    rng = np.random.default_rng(7)
    batches = [
        (rng.standard_normal((4, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 4))
        for _ in range(100)
    ]
    rule = FA(seed=3)
    step = funcnn.make_train_step(model, opt, grad=rule, donate=False)
    b0 = rules.feedback_weights(model, state.params, rule)
    states = [state]
    for batch in batches:
        state, _ = step(state, batch)
        states.append(state)
    assert not np.allclose(
        states[0].params["03_dense"]["w"], state.params["03_dense"]["w"]
    )
    b100 = rules.feedback_weights(model, state.params, rule)
    save_checkpoint(tmp_path / "ckpt.safetensors", states[50])
    resumed, _ = load_checkpoint(tmp_path / "ckpt.safetensors", like=states[0])
    b_loaded = rules.feedback_weights(model, resumed.params, rule)
    for batch in batches[50:]:
        resumed, _ = step(resumed, batch)
    for path in ("00_conv", "03_dense"):
        np.testing.assert_array_equal(b0[path], b100[path])
        np.testing.assert_array_equal(b0[path], b_loaded[path])
    # The resumed run is the uninterrupted one, bit for bit.
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    # The layer's backward uses that B with the trained weights: dX = g @ B.
    dense = model.children[3][1]
    x3, g3 = jnp.ones((2, 32), jnp.float32), jnp.ones((2, 3), jnp.float32)
    scoped = rules.scope(rule, "03_dense")
    dx = grads(
        lambda x: dense.apply(state.params["03_dense"], {}, x, grad=scoped)[0], g3, x3
    )
    assert_close(dx[0], g3 @ b0["03_dense"], 1e-6)
    # Glorot uniform times 0.5: std 0.5 * sqrt(2 / (32 + 3)).
    assert float(jnp.std(b0["03_dense"])) == pytest.approx(
        0.5 * np.sqrt(2 / 35), rel=0.3
    )


# ------------------------------------------------------------------ user rules


def test_straight_through_quantized_conv():
    """Forward through rounded weights, backward the exact rule of the ideal conv."""
    x, w, b, _, g, kw = conv_case(1)
    rule = rules.register("quantized_conv", QuantizedConv(step=0.5), overwrite=True)
    w_q = jnp.round(w / 0.5) * 0.5
    assert not np.allclose(w_q, w)
    conv = lax_conv(kw)
    for grad in (rule, "quantized_conv"):
        y, (dx, dw, db) = op_vjp(ops.conv2d, grad, g, x, w, b, **kw)
        assert_close(y, conv(x, w_q, b), 1e-12)
        for got, want in zip((dx, dw, db), grads(conv, g, x, w, b)):
            assert_close(got, want, 1e-10)
    # Through a layer, by name; dense layers under the same model keep "custom".
    layer = funcnn.Conv2D(4, 3, stride=2, padding=1, dtype=F64)
    _, p, _ = layer.init(jax.random.PRNGKey(0), (-1, 3, 6, 6))
    y = layer.apply(p, {}, x, grad="quantized_conv")[0]
    assert_close(y, conv(x, jnp.round(p["w"] / 0.5) * 0.5, p["b"]), 1e-12)


def test_split_ties_max_pool_on_a_hand_computed_tie():
    x = jnp.asarray([[[[1.0, 3.0, 3.0, 0.0], [2.0, 3.0, 1.0, 1.0]]]], F64)
    g = jnp.asarray([[[[4.0, 6.0]]]], F64)
    # Window 1 holds two 3s: half of 4 each; window 2 has one maximum.
    want = [[[[0.0, 2.0, 6.0, 0.0], [0.0, 2.0, 0.0, 0.0]]]]
    pool = ops.max_pool2d
    assert_close(grads(lambda x: pool(x, 2, grad=SplitTies()), g, x)[0], want, 1e-15)
    # The exact rule gives each delta to the first maximum.
    exact = [[[[0.0, 4.0, 6.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]]
    np.testing.assert_array_equal(grads(lambda x: pool(x, 2), g, x)[0], exact)
    # In a model, by mapping, with padding and overlap: no ties, so exact.
    model = funcnn.serial(funcnn.MaxPool2D(3, stride=2, padding=1), funcnn.Flatten())
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 2, 5, 5))
    xr = rand(np.random.default_rng(8), (2, 2, 5, 5))
    gr = rand(np.random.default_rng(9), (2, 18))

    def delta(grad):
        return grads(lambda x: model.apply(params, state, x, grad=grad)[0], gr, xr)[0]

    split = {"*maxpool*": SplitTies(), "*": "custom"}
    assert_close(delta(split), delta("custom"), 1e-15)


# ------------------------------------------------------------------- alignment


def test_angle_and_alignment():
    assert float(rules.angle(jnp.asarray([1.0, 0.0]), jnp.asarray([1.0, 1.0]))) == (
        pytest.approx(45.0, abs=1e-12)
    )
    assert float(rules.angle([jnp.asarray([2.0])], [jnp.asarray([-1.0])])) == 180.0
    assert np.isnan(rules.angle(jnp.zeros(2), jnp.ones(2)))
    model = funcnn.serial(
        funcnn.Conv2D(3, 3), funcnn.Relu(), funcnn.MaxPool2D(2), funcnn.Flatten(),
        funcnn.Dense(5), funcnn.Relu(), funcnn.Dense(4),
    )  # fmt: skip
    opt = funcnn.make_optimizer("adam", 1e-3)
    state = funcnn.create_train_state(model, (-1, 1, 6, 6), opt)
    rng = np.random.default_rng(10)
    batch = (
        rng.standard_normal((8, 1, 6, 6)).astype(np.float32),
        rng.integers(0, 4, 8),
    )
    same = funcnn.alignment(
        model, state.params, state.model_state, batch, grad="custom"
    )
    assert list(same) == ["00_conv", "04_dense", "06_dense"]
    assert all(a.grad == 0.0 and a.delta == 0.0 for a in same.values())
    # The train step's option logs the angles under readable names; dW of the
    # last layer is exact under feedback alignment, its input delta is not.
    step = funcnn.make_train_step(model, opt, grad="feedback_alignment", alignment=True)
    _, metrics = step(state, batch)
    names = {k for k in metrics if k.startswith(("align_grad", "align_delta"))}
    assert names == {f"align_{a}/{p}" for a in ("grad", "delta") for p in same}
    assert float(metrics["align_grad/06_dense"]) < 1e-3
    for name in names - {"align_grad/06_dense"}:
        assert 1.0 < float(metrics[name]) < 179.0


# ---------------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True)
class Listy(rules.Rule):
    scales: object = (1.0,)
    ops = ("dense",)


X = jnp.ones((2, 3), jnp.float32)
W = jnp.ones((4, 3), jnp.float32)
XC, WC = jnp.ones((1, 1, 4, 4), jnp.float32), jnp.ones((2, 1, 3, 3), jnp.float32)
PRE = "expected grad to be one of ('custom', 'autodiff', 'feedback_alignment', "
NAMES = (
    "'sign_symmetry', 'usf', 'brsf', 'frsf', 'direct_feedback_alignment', "
    "'kolen_pollack')"
)
MODEL = small_model()
_, MODEL_PARAMS, MODEL_STATE = MODEL.init(jax.random.PRNGKey(0), (-1, 1, 5, 5))
OPT = funcnn.make_optimizer("sgd", 0.1)


def apply_model(grad):
    return MODEL.apply(
        MODEL_PARAMS, MODEL_STATE, jnp.ones((1, 1, 5, 5), F64), grad=grad
    )


ERRORS = [
    (lambda: ops.dense(X, W, grad="feedback_alignmnet"), ValueError,
     f"dense: {PRE}{NAMES}, a name given to funcnn.rules.register or a "
     "funcnn.rules.Rule value, got 'feedback_alignmnet'. Did you mean "
     "'feedback_alignment'?"),
    (lambda: ops.dense(X, W, grad=rules.SignSymmetry), ValueError,
     "Pass an instance: SignSymmetry()."),
    (lambda: ops.dense(X, W, grad={"*": "custom"}), ValueError,
     "A mapping from layer paths to rules applies to a model"),
    (lambda: funcnn.make_train_step(MODEL, OPT, grad={"*conv*": "sgn"}), ValueError,
     "make_train_step: expected grad at key '*conv*' to be one of ('custom', "),
    (lambda: funcnn.make_eval_step(MODEL, grad={"*pool*": "sign_symmetry"}), ValueError,
     "make_eval_step: expected every grad mapping key to match a layer "
     "path, got ['*pool*'] matching none."),
    (lambda: ops.dense(X, W, grad=FA(feedback=jnp.ones((3, 4)))), ValueError,
     "feedback_alignment: expected feedback of w's shape (4, 3) for dense, got "
     "(3, 4). Give each layer its own B with a mapping"),
    (lambda: apply_model(FA(feedback=jnp.ones((3, 1, 3, 3)))), ValueError,
     "feedback_alignment: expected feedback of w's shape (6, 75) for dense "
     "at layer '03_dense', got (3, 1, 3, 3)."),
    (lambda: FA(feedback=[[1.0]]), TypeError,
     "feedback_alignment: expected feedback to be an array of w's shape or None, got "
     "list."),
    (lambda: FA(seed=-1), ValueError,
     "feedback_alignment: expected seed >= 0, got -1."),
    (lambda: ops.conv2d(XC, WC, grad=SplitTies()), ValueError,
     "conv2d: expected a rule that supports conv2d, got SplitTies(), which rewrites "
     "only ('max_pool2d',). Give such layers another rule with a mapping"),
    (lambda: funcnn.make_train_step(MODEL, OPT, grad=Listy()), ValueError,
     "make_train_step: expected a rule that supports conv2d at layer '00_conv', got "
     "Listy(scales=(1.0,)), which rewrites only ('dense',)."),
    (lambda: ops.dense(X, W, grad=Listy(scales=[1.0])), TypeError,
     "dense: expected hashable config fields in Listy, got an unhashable list in "
     "field 'scales'."),
    (lambda: rules.register("custom", SS()), ValueError,
     "rules.register: expected a name other than ('custom', 'autodiff'), got "
     "'custom'."),
    (lambda: rules.register("sign_symmetry", FA()), ValueError,
     "rules.register: expected a new name, got 'sign_symmetry', which already names "
     "SignSymmetry(clip=None). Pass overwrite=True to replace it."),
    (lambda: rules.register("mine", SplitTies), TypeError,
     "rules.register: expected a funcnn.rules.Rule value, got <class"),
]  # fmt: skip


@pytest.mark.parametrize("make, err, message", ERRORS, ids=[e[2][:48] for e in ERRORS])
def test_errors(make, err, message):
    with pytest.raises(err, match=re.escape(message)):
        make()


def test_a_user_rule_returning_a_wrong_shape_is_named():
    @dataclasses.dataclass(frozen=True)
    class Broken(rules.Rule):
        ops = ("dense",)

        def dense_input_grad(self, g, w):
            return g

    g = jnp.asarray(np.random.default_rng(11).standard_normal((2, 4)), jnp.float32)
    with pytest.raises(
        ValueError, match=re.escape("Broken.dense_input_grad: expected")
    ):
        grads(lambda x: ops.dense(x, W, grad=Broken()), g, X)


@dataclasses.dataclass(frozen=True)
class _HalfAvg(rules.Rule):
    """An avg-pool rule for the layout test: half the exact input delta."""

    ops = ("avg_pool2d",)

    def avg_pool2d_input_grad(self, g, win):
        return 0.5 * super().avg_pool2d_input_grad(g, win)


@pytest.mark.parametrize(
    "op, rule",
    [
        ("conv", rules.feedback_alignment(seed=3)),
        ("conv", rules.sign_symmetry()),
        ("conv", QuantizedConv(0.25)),
        ("max", SplitTies()),
        ("avg", _HalfAvg()),
    ],
    ids=["fa", "sign", "quantized", "split_ties", "half_avg"],
)
def test_rule_values_give_the_same_deltas_in_nhwc(op, rule):
    # The rule-driven VJPs in NHWC equal NCHW's, transposed (integer-valued x so
    # that the max pool has ties for SplitTies to split).
    x = jnp.asarray(np.random.default_rng(0).integers(-2, 3, (2, 3, 6, 6)), float)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 3, 3)))
    b = jnp.arange(4.0)

    def f(layout, x, w, b):
        xx = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
        if op == "conv":
            kw = dict(padding=1, stride=2, layout=layout, grad=rule)
            y = ops.conv2d(xx, w.astype(x.dtype), b.astype(x.dtype), **kw)
        elif op == "max":
            y = ops.max_pool2d(xx, 3, stride=2, padding=1, layout=layout, grad=rule)
        else:
            kw = dict(padding=1, count_include_pad=False, layout=layout, grad=rule)
            y = ops.avg_pool2d(xx, 3, stride=2, **kw)
        return y if layout == "NCHW" else y.transpose(0, 3, 1, 2)

    y, pull = jax.vjp(lambda *a: f("NCHW", *a), x, w, b)
    g = jnp.asarray(np.random.default_rng(2).normal(size=y.shape))
    y_h, pull_h = jax.vjp(lambda *a: f("NHWC", *a), x, w, b)
    assert_close(y_h, y, 1e-14)
    for got, want in zip(pull_h(g), pull(g)):
        assert_close(got, want, 1e-12)

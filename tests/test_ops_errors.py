"""Every validation message of conv2d, max_pool2d and avg_pool2d.

Each bad call must raise the same error with the same message eagerly, under
jax.jit and under jax.eval_shape: the checks run in Python on static shapes and
dtypes, before anything is traced or compiled.
"""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import ops

f32, f64 = jnp.float32, jnp.float64


def arr(shape, dtype=f32):
    return jnp.zeros(shape, dtype)


X = arr((2, 3, 5, 5))  # conv input: N=2, C_in=3
W = arr((4, 3, 3, 3))  # 4 filters over 3 channels


def conv(**kw):
    return partial(ops.conv2d, **kw)


def maxp(window=2, **kw):
    return partial(ops.max_pool2d, window=window, **kw)


def avgp(window=2, **kw):
    return partial(ops.avg_pool2d, window=window, **kw)


RANK_HINT = "Add batch and channel axes: x[None, None]."
EMPTY_FIX = "got an empty output. Use a smaller window or dilation, or more padding."
GRAD_MSG = (
    "expected grad to be one of ('custom', 'autodiff', 'feedback_alignment', "
    "'sign_symmetry', 'usf', 'brsf', 'frsf', 'direct_feedback_alignment', "
    "'kolen_pollack'), a name given to funcnn.rules.register or a "
    "funcnn.rules.Rule value, got 'manual'. "
    'Use grad="custom" for the hand-written backward rule or grad="autodiff" for '
    "jax.grad of the plain forward."
)
FLOAT_MSG = (
    "expected x with a floating dtype (float32, float64, bfloat16, float16), got "
    "int32. Cast it, e.g. x.astype(jnp.float32)."
)

# (id, function, array arguments, error type, exact message)
CASES = [
    # ---- conv2d: ranks
    ("conv-x-2d", conv(), (arr((28, 28)), W), ValueError,
     f"conv2d: expected x of rank 4 (N, C_in, H, W), got shape (28, 28). {RANK_HINT}"),
    ("conv-x-3d", conv(), (arr((3, 5, 5)), W), ValueError,
     "conv2d: expected x of rank 4 (N, C_in, H, W), got shape (3, 5, 5). "
     "Add a batch axis: x[None]."),
    ("conv-x-5d", conv(), (arr((1, 2, 3, 5, 5)), W), ValueError,
     "conv2d: expected x of rank 4 (N, C_in, H, W), got shape (1, 2, 3, 5, 5)."),
    ("conv-w-3d", conv(), (X, arr((4, 3, 3))), ValueError,
     "conv2d: expected w of rank 4 (C_out, C_in // groups, KH, KW), got shape "
     "(4, 3, 3)."),
    # ---- conv2d: channels and groups
    ("conv-channels", conv(), (X, arr((4, 2, 3, 3))), ValueError,
     "conv2d: expected w.shape[1] == C_in // groups = 3 // 1 = 3, got w of shape "
     "(4, 2, 3, 3) for x of shape (2, 3, 5, 5). The input channels of x and w do "
     "not match."),
    ("conv-channels-groups", conv(groups=2), (arr((2, 4, 5, 5)), arr((4, 1, 3, 3))),
     ValueError,
     "conv2d: expected w.shape[1] == C_in // groups = 4 // 2 = 2, got w of shape "
     "(4, 1, 3, 3) for x of shape (2, 4, 5, 5)."),
    ("conv-groups-cin", conv(groups=2), (X, arr((4, 1, 3, 3))), ValueError,
     "conv2d: expected groups (=2) to divide both C_in (=3) and C_out (=4)."),
    ("conv-groups-cout", conv(groups=3), (X, arr((4, 1, 3, 3))), ValueError,
     "conv2d: expected groups (=3) to divide both C_in (=3) and C_out (=4)."),
    ("conv-groups-0", conv(groups=0), (X, W), ValueError,
     "conv2d: expected groups to be a positive int, got 0."),
    ("conv-groups-bool", conv(groups=True), (X, W), ValueError,
     "conv2d: expected groups to be a positive int, got True."),
    ("conv-groups-float", conv(groups=1.0), (X, W), ValueError,
     "conv2d: expected groups to be a positive int, got 1.0."),
    # ---- conv2d: stride, dilation
    ("conv-stride-0", conv(stride=0), (X, W), ValueError,
     "conv2d: expected stride >= 1, got 0. Every stride must be a positive integer."),
    ("conv-stride-neg", conv(stride=(1, -2)), (X, W), ValueError,
     "conv2d: expected stride >= 1, got (1, -2)."),
    ("conv-dilation-0", conv(dilation=0), (X, W), ValueError,
     "conv2d: expected dilation >= 1, got 0. Every dilation must be a positive "
     "integer."),
    ("conv-stride-bool", conv(stride=True), (X, W), TypeError,
     "conv2d: expected stride to be an int or a pair of ints, got True."),
    ("conv-stride-bool-pair", conv(stride=(1, False)), (X, W), TypeError,
     "conv2d: expected stride to be an int or a pair of ints, got (1, False)."),
    ("conv-stride-float", conv(stride=2.0), (X, W), TypeError,
     "conv2d: expected stride to be an int or a pair of ints, got 2.0."),
    ("conv-stride-float-pair", conv(stride=(1, 2.0)), (X, W), TypeError,
     "conv2d: expected stride to be an int or a pair of ints, got (1, 2.0)."),
    ("conv-stride-triple", conv(stride=(1, 1, 1)), (X, W), TypeError,
     "conv2d: expected stride to be an int or a pair of ints, got (1, 1, 1)."),
    ("conv-dilation-bool", conv(dilation=True), (X, W), TypeError,
     "conv2d: expected dilation to be an int or a pair of ints, got True."),
    # ---- conv2d: padding
    ("conv-pad-neg", conv(padding=-1), (X, W), ValueError,
     "conv2d: expected non-negative padding, got -1. Crop the input instead of "
     "padding it negatively."),
    ("conv-pad-neg-pairs", conv(padding=((0, -1), (0, 0))), (X, W), ValueError,
     "conv2d: expected non-negative padding, got ((0, -1), (0, 0))."),
    ("conv-pad-string", conv(padding="FULL"), (X, W), ValueError,
     "conv2d: expected padding \"SAME\" or \"VALID\" when given as a string, got "
     "'FULL'."),
    ("conv-pad-float", conv(padding=1.5), (X, W), TypeError,
     "conv2d: expected padding as an int, a pair (ph, pw), a pair of pairs "
     "((top, bottom), (left, right)) or \"SAME\"/\"VALID\", got 1.5."),
    ("conv-pad-triple", conv(padding=(1, 2, 3)), (X, W), TypeError,
     "conv2d: expected padding as an int, a pair (ph, pw), a pair of pairs "
     "((top, bottom), (left, right)) or \"SAME\"/\"VALID\", got (1, 2, 3)."),
    ("conv-pad-ragged", conv(padding=((1,), (2, 3))), (X, W), TypeError,
     "got ((1,), (2, 3))."),
    ("conv-pad-bool", conv(padding=True), (X, W), TypeError, "got True."),
    # ---- conv2d: empty output
    ("conv-window-h", conv(), (arr((1, 1, 3, 3)), arr((1, 1, 5, 5))), ValueError,
     "conv2d: expected the effective window (5) to fit in the padded input along H "
     f"(3 + 0 + 0 = 3), {EMPTY_FIX}"),
    ("conv-window-w", conv(padding=((1, 1), (0, 0))),
     (arr((1, 1, 3, 3)), arr((1, 1, 3, 4))), ValueError,
     "conv2d: expected the effective window (4) to fit in the padded input along W "
     f"(3 + 0 + 0 = 3), {EMPTY_FIX}"),
    ("conv-window-dilated", conv(dilation=(2, 1), padding=((0, 1), (0, 0))),
     (arr((1, 1, 3, 5)), arr((1, 1, 3, 3))), ValueError,
     "conv2d: expected the effective window (5) to fit in the padded input along H "
     f"(3 + 0 + 1 = 4), {EMPTY_FIX}"),
    # ---- conv2d: grad mode, dtypes, bias
    ("conv-grad", conv(grad="manual"), (X, W), ValueError, f"conv2d: {GRAD_MSG}"),
    ("conv-dtype", conv(), (X, arr((4, 3, 3, 3), f64)), TypeError,
     "conv2d: expected w with the dtype of x (float32), got float64. Cast one of "
     "them, e.g. w.astype(float32)."),
    ("conv-int", conv(), (arr((2, 3, 5, 5), jnp.int32), arr((4, 3, 3, 3), jnp.int32)),
     TypeError, f"conv2d: {FLOAT_MSG}"),
    ("conv-bias-shape", ops.conv2d, (X, W, arr((3,))), ValueError,
     "conv2d: expected b of shape (C_out,) = (4,), got (3,)."),
    ("conv-bias-rank", ops.conv2d, (X, W, arr((1, 4))), ValueError,
     "conv2d: expected b of shape (C_out,) = (4,), got (1, 4)."),
    ("conv-bias-dtype", ops.conv2d, (X, W, arr((4,), f64)), TypeError,
     "conv2d: expected b with the dtype of x (float32), got float64."),
    # ---- pools: ranks and dtypes
    ("max-x-2d", maxp(), (arr((28, 28)),), ValueError,
     f"max_pool2d: expected x of rank 4 (N, C, H, W), got shape (28, 28). {RANK_HINT}"),
    ("avg-x-3d", avgp(), (arr((3, 5, 5)),), ValueError,
     "avg_pool2d: expected x of rank 4 (N, C, H, W), got shape (3, 5, 5). "
     "Add a batch axis: x[None]."),
    ("max-int", maxp(), (arr((1, 1, 4, 4), jnp.int32),), TypeError,
     f"max_pool2d: {FLOAT_MSG}"),
    ("avg-int", avgp(), (arr((1, 1, 4, 4), jnp.int32),), TypeError,
     f"avg_pool2d: {FLOAT_MSG}"),
    # ---- pools: window, stride, dilation
    ("max-window-0", maxp(0), (X,), ValueError,
     "max_pool2d: expected window >= 1, got 0. Every window must be a positive "
     "integer."),
    ("avg-window-0", avgp((2, 0)), (X,), ValueError,
     "avg_pool2d: expected window >= 1, got (2, 0)."),
    ("max-window-bool", maxp(True), (X,), TypeError,
     "max_pool2d: expected window to be an int or a pair of ints, got True."),
    ("avg-window-float", avgp(2.0), (X,), TypeError,
     "avg_pool2d: expected window to be an int or a pair of ints, got 2.0."),
    ("max-stride-0", maxp(stride=0), (X,), ValueError,
     "max_pool2d: expected stride >= 1, got 0."),
    ("avg-stride-neg", avgp(stride=(-1, 1)), (X,), ValueError,
     "avg_pool2d: expected stride >= 1, got (-1, 1)."),
    ("max-stride-float", maxp(stride=1.5), (X,), TypeError,
     "max_pool2d: expected stride to be an int or a pair of ints, got 1.5."),
    ("max-dilation-0", maxp(dilation=0), (X,), ValueError,
     "max_pool2d: expected dilation >= 1, got 0."),
    ("max-dilation-bool", maxp(dilation=(1, True)), (X,), TypeError,
     "max_pool2d: expected dilation to be an int or a pair of ints, got (1, True)."),
    # ---- pools: padding
    ("max-pad-half", maxp(3, padding=2), (X,), ValueError,
     "max_pool2d: expected padding along H at most half the effective window "
     "(3 // 2 = 1), got (2, 2). Use less padding, or pad x yourself (jnp.pad) for a "
     "wider border."),
    ("max-pad-half-w", maxp(3, padding=((1, 1), (0, 2))), (X,), ValueError,
     "max_pool2d: expected padding along W at most half the effective window "
     "(3 // 2 = 1), got (0, 2)."),
    ("max-pad-half-dilated", maxp(2, dilation=3, padding=3), (X,), ValueError,
     "max_pool2d: expected padding along H at most half the effective window "
     "(4 // 2 = 2), got (3, 3)."),
    ("avg-pad-half", avgp(2, padding=(0, 2)), (X,), ValueError,
     "avg_pool2d: expected padding along W at most half the effective window "
     "(2 // 2 = 1), got (2, 2)."),
    ("max-pad-neg", maxp(padding=-1), (X,), ValueError,
     "max_pool2d: expected non-negative padding, got -1."),
    ("avg-pad-string", avgp(padding="full"), (X,), ValueError,
     "avg_pool2d: expected padding \"SAME\" or \"VALID\" when given as a string, got "
     "'full'."),
    ("max-pad-float", maxp(padding=0.5), (X,), TypeError,
     "max_pool2d: expected padding as an int, a pair (ph, pw), a pair of pairs"),
    # ---- pools: empty output, flags, grad mode
    ("max-window-big", maxp(3), (arr((1, 1, 2, 5)),), ValueError,
     "max_pool2d: expected the effective window (3) to fit in the padded input along "
     f"H (2 + 0 + 0 = 2), {EMPTY_FIX}"),
    ("max-window-dilated", maxp((1, 2), dilation=3), (arr((1, 1, 5, 3)),), ValueError,
     "max_pool2d: expected the effective window (4) to fit in the padded input along "
     "W (3 + 0 + 0 = 3)"),
    ("avg-window-big", avgp((2, 6), padding=(0, 1)), (arr((1, 1, 3, 3)),), ValueError,
     "avg_pool2d: expected the effective window (6) to fit in the padded input along "
     "W (3 + 1 + 1 = 5)"),
    ("max-ceil-int", maxp(ceil_mode=1), (X,), TypeError,
     "max_pool2d: expected ceil_mode to be a bool, got 1."),
    ("avg-ceil-none", avgp(ceil_mode=None), (X,), TypeError,
     "avg_pool2d: expected ceil_mode to be a bool, got None."),
    ("avg-count-include-pad", avgp(count_include_pad="yes"), (X,), TypeError,
     "avg_pool2d: expected count_include_pad to be a bool, got 'yes'."),
    ("max-grad", maxp(grad="manual"), (X,), ValueError, f"max_pool2d: {GRAD_MSG}"),
    ("avg-grad", avgp(grad=None), (X,), ValueError,
     "avg_pool2d: expected grad to be one of ('custom', 'autodiff', "
     "'feedback_alignment', 'sign_symmetry', 'usf', 'brsf', 'frsf', "
     "'direct_feedback_alignment', 'kolen_pollack'), a name given to "
     "funcnn.rules.register or a funcnn.rules.Rule value, got None."),
]  # fmt: skip


def _ids(cases):
    return [case[0] for case in cases]


@pytest.mark.parametrize("how", ["eager", "jit", "eval_shape"])
@pytest.mark.parametrize("name, fn, args, err, message", CASES, ids=_ids(CASES))
def test_error_message(name, fn, args, err, message, how):
    del name
    if how == "jit":
        fn = jax.jit(fn)
    elif how == "eval_shape":
        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
        fn, args = partial(jax.eval_shape, fn), specs
    with pytest.raises(err, match=re.escape(message)) as info:
        fn(*args)
    # One message, built as one string (not a tuple of parts).
    assert len(info.value.args) == 1 and isinstance(info.value.args[0], str)


@pytest.mark.parametrize("fn", [conv(), maxp()], ids=["conv2d", "max_pool2d"])
def test_non_array_input(fn):
    args = ([[1.0, 2.0]], W) if fn.func is ops.conv2d else ([[1.0, 2.0]],)
    message = f"{fn.func.__name__}: expected x to be an array, got list."
    with pytest.raises(TypeError, match=re.escape(message)):
        fn(*args)


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compiles():
    """The names of the functions XLA compiles while the test runs (jax's
    monitoring events: one per backend compilation)."""
    seen = []

    def listen(event, duration, **kwargs):
        del duration
        if event == BACKEND_COMPILE:
            seen.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listen)


def test_errors_raise_before_compiling(compiles):
    """A bad call under jit fails while tracing, and XLA compiles nothing; the same
    call with a good stride compiles (so the listener does see compilations)."""
    x = np.zeros((2, 3, 6, 7), np.float32)  # a shape no other test compiles

    def strided_conv(x, stride):
        return ops.conv2d(x, W, stride=stride)

    f = jax.jit(strided_conv, static_argnums=1)
    with pytest.raises(ValueError, match="conv2d: expected stride >= 1, got 0"):
        f(x, 0)
    assert compiles == []
    f(x, 2)
    assert compiles == ["jit(strided_conv)"]


@pytest.mark.parametrize(
    "spelling, canonical",
    [
        ("same", "SAME"),
        ("Valid", "VALID"),
        ((1, 0), ((1, 1), (0, 0))),
        (1, ((1, 1),) * 2),
    ],
)
def test_padding_spellings_are_equivalent(spelling, canonical):
    """The accepted spellings give the output of the canonical one."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 3, 6, 7)), f32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 3, 3)), f32)
    np.testing.assert_array_equal(
        ops.conv2d(x, w, padding=spelling), ops.conv2d(x, w, padding=canonical)
    )
    np.testing.assert_array_equal(
        ops.max_pool2d(x, 3, stride=1, padding=spelling),
        ops.max_pool2d(x, 3, stride=1, padding=canonical),
    )

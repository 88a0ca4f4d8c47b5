"""Tests for funcnn.backward_trace and make_train_step(layer_stats=True): deltas
against jax.grad of zeros added by hand, hand-computed pool routing, nested
combinators, the unchanged default step, and the error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, fast_jit

from funcnn import (
    AvgPool2D,
    BackwardTrace,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerTrace,
    MaxPool2D,
    Relu,
    Split,
    Tanh,
    backward_trace,
    branches,
    parallel,
    residual,
    serial,
    softmax_cross_entropy,
)
from funcnn.nn.combinators import Add
from funcnn.ops._vjp import custom_vjp
from funcnn.ops.kernels import avg_pool as avg_pool_ops
from funcnn.ops.kernels import conv as conv_ops
from funcnn.ops.kernels import max_pool as pool_ops
from funcnn.training.losses import accuracy
from funcnn.training.optim import learning_rate
from funcnn.training.step import (
    _all_finite,
    _global_norm,
    create_train_state,
    make_train_step,
)

pytestmark = pytest.mark.usefixtures("release_compiled")

GRADS = ("custom", "autodiff")
LAYERS = [
    Conv2D(3, 3, padding=1),
    Relu(),
    MaxPool2D(2),
    Conv2D(4, 3, padding=1),
    Tanh(),
    AvgPool2D(2),
    Flatten(),
    Dense(5),
]
KEYS = [f"{i:02d}_{layer.name}" for i, layer in enumerate(LAYERS)]


def _batch(shape=(4, 1, 8, 8), classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, classes, shape[0]), jnp.int32)


def _params(model, shape):
    # One compiled init rather than an eager compile per initialiser.
    return fast_jit(lambda key: model.init(key, shape)[1:])(jax.random.PRNGKey(0))


def _by_hand(params, x, y, grad):
    """The plain serial CNN's loss, activations `[(input, output)]`, and
    `(param grads, delta_in, delta_out)`: zeros added before and after each
    layer, the layers applied one by one (no hook)."""

    def loss(params, z_in, z_out):
        a, acts = x, []
        for key, layer, zi, zo in zip(KEYS, LAYERS, z_in, z_out):
            b, _ = layer.apply(params[key], {}, a + zi, grad=grad)
            acts.append((a, b))
            a = b + zo
        return softmax_cross_entropy(a, y), acts

    shapes, a = [], x
    for key, layer in zip(KEYS, LAYERS):
        b, _ = layer.apply(params[key], {}, a, grad=grad)
        shapes.append((a.shape, b.shape))
        a = b
    z_in = [jnp.zeros(s, jnp.float32) for s, _ in shapes]
    z_out = [jnp.zeros(s, jnp.float32) for _, s in shapes]
    (value, acts), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
        params, z_in, z_out
    )
    return value, acts, grads


@pytest.fixture(scope="module")
def cnn():
    model = serial(*LAYERS)
    params, state = _params(model, (-1, 1, 8, 8))
    x, y = _batch()
    return model, params, state, x, y


def _record_rules(patch, calls):
    """Wraps every custom rule's backward to record the delta it received and the
    one it sent back."""
    for module in (conv_ops, pool_ops, avg_pool_ops):
        for name, rule in vars(module).items():
            if isinstance(rule, custom_vjp):

                def bwd(*args, _bwd=rule.bwd, _name=name):
                    res = _bwd(*args)
                    calls.append((_name, args[-1], res[0]))
                    return res

                patch.setattr(rule, "bwd", bwd)


@pytest.fixture(scope="module")
def traces(cnn):
    """Both modes' traces, the deltas by hand, and what the custom rules saw (name,
    delta received, delta sent back) while each mode traced, from one compiled
    function."""
    model, params, state, x, y = cnn
    calls, names = [], {}

    def run(params):
        out, seen = {}, {}
        for grad in GRADS:
            start = len(calls)
            out[grad] = backward_trace(model, params, state, (x, y), grad=grad)
            names[grad] = [name for name, _, _ in calls[start:]]
            seen[grad] = [(g, dx) for _, g, dx in calls[start:]]
        return out, seen, _by_hand(params, x, y, "autodiff")

    with pytest.MonkeyPatch.context() as patch:
        _record_rules(patch, calls)
        out, seen, by_hand = fast_jit(run)(params)
    rules_seen = {
        grad: [(n, g, dx) for n, (g, dx) in zip(names[grad], seen[grad])]
        for grad in GRADS
    }
    return out, rules_seen, by_hand


@pytest.mark.parametrize("grad", GRADS)
def test_deltas_and_param_grads_equal_jax_grad_of_zeros_added_by_hand(traces, grad):
    trace = traces[0][grad]
    loss, acts, (d_params, d_in, d_out) = traces[2]
    assert isinstance(trace, BackwardTrace) and trace.paths == KEYS
    assert [layer.name for layer in trace.layers] == [la.name for la in LAYERS]
    assert_close(trace.loss, loss, 1e-6)
    for i, key in enumerate(KEYS):
        t = trace[key]
        assert isinstance(t, LayerTrace) and t.path == key and trace[i] is t
        assert_close(t.input, acts[i][0], 1e-6)
        assert_close(t.output, acts[i][1], 1e-6)
        assert t.delta_out.dtype == jnp.float32
        assert_close(t.delta_out, d_out[i], 1e-5)
        assert_close(t.delta_in, d_in[i], 1e-5)
        assert jax.tree_util.tree_structure(t.param_grads) == (
            jax.tree_util.tree_structure(d_params[key])
        )
        for got, want in zip(
            jax.tree_util.tree_leaves(t.param_grads),
            jax.tree_util.tree_leaves(d_params[key]),
        ):
            assert_close(got, want, 1e-5)
    assert trace["01_relu"].param_grads == {}


def test_conv_and_pool_deltas_come_from_the_hand_written_rules(traces):
    """In custom mode the conv and pool layers' delta_out and delta_in are the
    very values each rule received and sent back (one per layer, last layer
    first); the autodiff trace calls no rule."""
    trace, calls = traces[0]["custom"], traces[1]["custom"]
    assert traces[1]["autodiff"] == []
    layers = [t for t in trace.layers if t.name in ("conv", "maxpool", "avgpool")]
    assert len(calls) == len(layers) == 4
    for t, (name, g, dx) in zip(layers, reversed(calls)):
        assert t.name[:3] in name
        np.testing.assert_array_equal(t.delta_out, g)
        np.testing.assert_array_equal(t.delta_in, dx)


def test_jit_equals_unjitted():
    model = serial(Conv2D(2, 3, padding=1), Relu(), MaxPool2D(2), Flatten(), Dense(3))
    params, state = _params(model, (-1, 1, 4, 4))
    batch = _batch((2, 1, 4, 4), classes=3)
    eager = backward_trace(model, params, state, batch)
    jitted = jax.jit(lambda p, s, b: backward_trace(model, p, s, b))(
        params, state, batch
    )
    assert isinstance(jitted, BackwardTrace) and jitted.paths == eager.paths
    leaves = zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted))
    for a, b in leaves:
        assert_close(b, a, 1e-6)


def _pool_trace(pool, x, g, grad):
    """The trace of a one-layer model (the pool is the root leaf) under the loss
    sum(out * g): delta_out is the random cotangent g itself."""
    trace = fast_jit(
        lambda x, g: backward_trace(
            pool, {}, {}, (x, g), loss=lambda out, t: jnp.sum(out * t), grad=grad
        )
    )(x, g)
    assert trace.paths == [pool.name]  # a root leaf is named by its name
    return trace[pool.name]


@pytest.mark.parametrize("grad", GRADS)
def test_max_pool_routes_each_delta_to_the_first_maximum(grad):
    x = jnp.array(
        [[1, 3, 2, 2], [3, 0, 1, 0], [5, 5, 4, 1], [5, 2, 0, 4]], jnp.float32
    )[None, None]
    g = jnp.array([[0.7, -1.3], [2.1, 0.4]], jnp.float32)[None, None]
    t = _pool_trace(MaxPool2D(2), x, g, grad)
    # Windows' maxima: 3 (tied, first at (0,1)), 2 (tied, (0,2)), 5 (three-way,
    # (2,0)), 4 (tied, (2,2)).
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1], expected[0, 2], expected[2, 0], expected[2, 2] = 0.7, -1.3, 2.1, 0.4
    np.testing.assert_array_equal(t.output[0, 0], [[3, 2], [5, 4]])
    np.testing.assert_array_equal(t.delta_out, g)
    np.testing.assert_array_equal(t.delta_in[0, 0], expected)


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_mean_pool_spreads_each_delta_over_its_window(grad, count_include_pad):
    x = jnp.arange(9, dtype=jnp.float32).reshape(1, 1, 3, 3)
    g = jnp.array([[0.8, -1.2], [2.0, 0.4]], jnp.float32)[None, None]
    pool = AvgPool2D(2, padding=1, count_include_pad=count_include_pad)
    t = _pool_trace(pool, x, g, grad)
    # Padded by 1, windows of 2 with stride 2 cover input rows/cols {0}, {1, 2}:
    # real cells per window 1, 2, 2, 4; with the padding counted, 4 each.
    divisor = np.full((2, 2), 4.0) if count_include_pad else np.array([[1, 2], [2, 4]])
    share = np.asarray(g[0, 0]) / divisor
    expected = np.empty((3, 3), np.float32)
    for i, rows in enumerate(([0], [1, 2])):
        for j, cols in enumerate(([0], [1, 2])):
            expected[np.ix_(rows, cols)] = share[i, j]
    assert_close(t.delta_in[0, 0], expected, 1e-6)


def test_nested_combinators_give_paths_and_tuple_deltas():
    model = serial(
        Conv2D(2, 3, padding=1),
        residual(Conv2D(2, 3, padding=1), Relu()),
        branches(Conv2D(1, 1), Conv2D(3, 1)),
        Concat(),
        Split(2),
        parallel(Relu(), Tanh()),
        Add(),
        Flatten(),
        Dense(3),
    )
    params, state = _params(model, (-1, 1, 4, 4))
    x, y = _batch((3, 1, 4, 4), classes=3, seed=1)

    def run(params):
        trace = backward_trace(model, params, state, (x, y))
        loss = lambda p: softmax_cross_entropy(model.apply(p, state, x)[0], y)  # noqa: E731
        return trace, jax.grad(loss)(params)

    trace, grads = jax.device_get(fast_jit(run)(params))  # numpy: no eager compiles
    assert trace.paths == [
        "00_conv",
        "01_residual/00_conv",
        "01_residual/01_relu",
        "01_residual/shortcut",
        "02_branches/00_conv",
        "02_branches/01_conv",
        "03_concat",
        "04_split",
        "05_parallel/00_relu",
        "05_parallel/01_tanh",
        "06_add",
        "07_flatten",
        "08_dense",
    ]
    assert trace["01_residual/shortcut"].name == "identity"
    concat, split, add = trace["03_concat"], trace["04_split"], trace["06_add"]
    assert isinstance(concat.input, tuple) and isinstance(concat.delta_in, tuple)
    assert [d.shape for d in concat.delta_in] == [(3, 1, 4, 4), (3, 3, 4, 4)]
    assert isinstance(split.output, tuple) and isinstance(split.delta_out, tuple)
    assert [d.shape for d in split.delta_out] == [(3, 2, 4, 4), (3, 2, 4, 4)]
    # The chain rule between neighbours, by hand: Concat's delta_in is its
    # delta_out cut along channels; each branch's delta_out is its part.
    d = concat.delta_out
    assert_close(concat.delta_in[0], d[:, :1], 1e-6)
    assert_close(concat.delta_in[1], d[:, 1:], 1e-6)
    assert_close(trace["02_branches/00_conv"].delta_out, d[:, :1], 1e-6)
    assert_close(split.delta_in, np.concatenate(split.delta_out, axis=1), 1e-6)
    for i, key in enumerate(["05_parallel/00_relu", "05_parallel/01_tanh"]):
        assert_close(trace[key].delta_in, split.delta_out[i], 1e-6)
        assert_close(add.delta_in[i], add.delta_out, 1e-6)
    # A fork sums: the residual input's delta is block + shortcut.
    assert_close(
        trace["00_conv"].delta_out,
        trace["01_residual/00_conv"].delta_in + trace["01_residual/shortcut"].delta_in,
        1e-5,
    )
    # The last delta by hand: (softmax(logits) - one_hot(y)) / N.
    logits = trace["08_dense"].output.astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    expected = (p / p.sum(1, keepdims=True) - np.eye(3)[np.asarray(y)]) / 3
    assert_close(trace["08_dense"].delta_out, expected, 1e-5)
    grads = jax.grad(lambda p: softmax_cross_entropy(model.apply(p, state, x)[0], y))(
        params
    )
    for path in ("01_residual/00_conv", "02_branches/01_conv", "08_dense"):
        want = grads[path.split("/")[0]]
        want = want[path.split("/")[1]] if "/" in path else want
        for a, b in zip(
            jax.tree_util.tree_leaves(trace[path].param_grads),
            jax.tree_util.tree_leaves(want),
        ):
            assert_close(a, b, 1e-5)


# ------------------------------------------------------------- layer_stats


def _reference_step(model, optimizer):
    """Today's train step written out here, with no hook in sight: the default
    `make_train_step` must lower to exactly this program."""

    def train_step(state, batch):
        x, y = batch
        key, step_key = jax.random.split(state.key)

        def objective(params):
            out, model_state = model.apply(
                params, state.model_state, x, train=True, key=step_key, grad="custom"
            )
            return softmax_cross_entropy(out, y), (out, model_state)

        (value, (out, model_state)), grads = jax.value_and_grad(
            objective, has_aux=True
        )(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ok = jnp.isfinite(value) & _all_finite(grads) & _all_finite(params)

        def keep(new, old):
            return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)

        new_state = state._replace(
            params=keep(params, state.params),
            model_state=keep(model_state, state.model_state),
            opt_state=keep(opt_state, state.opt_state),
            step=state.step + 1,
            key=key,
        )
        metrics = {
            "loss": value.astype(jnp.float32),
            "accuracy": accuracy(out, y).astype(jnp.float32),
            "grad_norm": _global_norm(grads),
            "nonfinite": jnp.logical_not(ok).astype(jnp.float32),
        }
        rate = learning_rate(opt_state)
        if rate is not None:
            metrics["lr"] = jnp.asarray(rate, jnp.float32)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def _small_with_dropout():
    return serial(
        Conv2D(3, 3, padding=1), Relu(), MaxPool2D(2), Flatten(), Dropout(0.5), Dense(4)
    )


def test_default_step_lowers_to_the_program_without_layer_stats():
    model, opt = _small_with_dropout(), optax.adam(1e-3)
    state = create_train_state(model, (-1, 1, 6, 6), opt)
    batch = _batch((4, 1, 6, 6), classes=4)
    text = make_train_step(model, opt).lower(state, batch).as_text()
    assert (
        text
        == make_train_step(model, opt, layer_stats=False).lower(state, batch).as_text()
    )
    assert text == _reference_step(model, opt).lower(state, batch).as_text()
    with_stats = make_train_step(model, opt, layer_stats=True).lower(state, batch)
    assert with_stats.as_text() != text  # the comparison can tell steps apart


def test_layer_stats_equal_the_backward_trace():
    model, opt = _small_with_dropout(), optax.adam(1e-3)
    state = create_train_state(model, (-1, 1, 6, 6), opt)
    batch = _batch((4, 1, 6, 6), classes=4)
    step = make_train_step(
        model, opt, label_smoothing=0.1, layer_stats=True, donate=False
    )
    _, metrics = step(state, batch)
    _, step_key = jax.random.split(state.key)  # the key train_step gives the model
    trace = fast_jit(
        lambda p, s, b, k: backward_trace(model, p, s, b, key=k, label_smoothing=0.1)
    )(state.params, state.model_state, batch, step_key)
    assert_close(metrics["loss"], trace.loss, 1e-6)
    with_params = {"00_conv", "05_dense"}
    assert {k for k in metrics if k.startswith("grad_norm/")} == {
        f"grad_norm/{p}" for p in with_params
    }
    for layer in trace.layers:
        if layer.path in with_params:
            leaves = jax.tree_util.tree_leaves(layer.param_grads)
            norm = np.sqrt(
                sum(np.sum(np.square(np.asarray(g, np.float64))) for g in leaves)
            )
            assert_close(metrics[f"grad_norm/{layer.path}"], norm, 1e-5)
        d = np.asarray(layer.delta_out, np.float64)
        assert_close(metrics[f"delta_rms/{layer.path}"], np.sqrt(np.mean(d**2)), 1e-5)
    # The trace drew the step's dropout mask: dropped units pass no delta back,
    # kept ones pass it scaled by 1 / (1 - rate).
    drop = trace["04_dropout"]
    x_in, y_out = np.asarray(drop.input), np.asarray(drop.output)
    d_in, d_out = np.asarray(drop.delta_in), np.asarray(drop.delta_out)
    dropped, kept = (y_out == 0) & (x_in != 0), y_out != 0
    assert dropped.any() and kept.any()
    np.testing.assert_array_equal(d_in[dropped], 0)
    assert_close(d_in[kept], 2 * d_out[kept], 1e-6)


# ------------------------------------------------------------------- errors


def test_errors_name_what_was_expected(cnn):
    model, params, state, x, y = cnn
    with pytest.raises(ValueError, match=r"backward_trace: expected loss in .*'hinge'"):
        backward_trace(model, params, state, (x, y), loss="hinge")
    with pytest.raises(ValueError, match=r"backward_trace: expected loss='cross_ent"):
        backward_trace(model, params, state, (x, y), loss="mse", label_smoothing=0.1)
    with pytest.raises(TypeError, match=r"expected batch to be a pair \(x, y\)"):
        backward_trace(model, params, state, x)
    with pytest.raises(
        ValueError,
        match=r"backward_trace: expected a batch \(x, y\) that the model and the "
        r"loss accept, got x of shape \(4, 1, 6, 6\) float32 .*the layer '07_dense' "
        r"rejected its input \(4, 4\) float32: Dense: expected x of shape \(N, 16\)",
    ):
        backward_trace(model, params, state, (x[:, :, :6, :6], y))
    with pytest.raises(ValueError, match=r"the loss rejected the model's output"):
        backward_trace(model, params, state, (x, y[:, None]))
    with pytest.raises(ValueError, match=r"expected grad to be one of"):
        backward_trace(model, params, state, (x, y), grad="manual")
    with pytest.raises(TypeError, match=r"expected a funcnn Layer as model, got list"):
        backward_trace(LAYERS, params, state, (x, y))
    dropout = serial(Flatten(), Dropout(0.5), Dense(2))
    p, s = _params(dropout, (-1, 1, 8, 8))
    with pytest.raises(
        ValueError, match=r"expected key=.*\['01_dropout'\], got key=None"
    ):
        backward_trace(dropout, p, s, (x, y % 2))
    trace = jax.eval_shape(
        lambda p: backward_trace(dropout, p, s, (x, y % 2), train=False), p
    )
    with pytest.raises(ValueError, match=r"expected one of the traced layer paths "
                       r"\['00_flatten', '01_dropout', '02_dense'\], got '02_dens'. "
                       r"Did you mean '02_dense'\?"):  # fmt: skip
        trace["02_dens"]
    assert "02_dense" in trace and "03_dense" not in trace


# -------------------------------------------------------------------- plots


def test_delta_and_grad_flow_plots(tmp_path):
    plots = pytest.importorskip("funcnn.inspect.plots")
    model = serial(Conv2D(2, 3, padding=1), Relu(), MaxPool2D(2), Flatten(), Dense(3))
    params, state = _params(model, (-1, 1, 4, 4))
    image = np.asarray(_batch((1, 1, 4, 4))[0][0])
    written = plots.plot_deltas(model, params, state, image, 1, tmp_path / "d.png")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [
        {
            "type": "step",
            "step": s,
            "grad_norm/00_conv": 1.0 / s,
            "delta_rms/00_conv": 2.0,
        }
        for s in range(1, 4)
    ]
    flow = plots.plot_grad_flow(records + [{"type": "epoch"}], tmp_path / "g.png")
    assert flow.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"plot_deltas: expected one image of shape"):
        plots.plot_deltas(model, params, state, image[None], 1, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"expected pool to be .* \['02_maxpool'\]"):
        plots.plot_deltas(model, params, state, image, 1, tmp_path / "x.png", pool="x")
    with pytest.raises(ValueError, match=r"expected metrics records with 'grad_norm/"):
        plots.plot_grad_flow([{"type": "step", "step": 1, "loss": 1.0}], tmp_path / "x")

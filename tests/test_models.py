"""Tests for the research models (funcnn.nn.models) and mixed precision."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, fast_jit

import funcnn as fn
from funcnn.data.augment import random_crop_flip
from funcnn.nn.models.mobilenet import mobilenet_v1
from funcnn.nn.models.resnet import ShortcutA, resnet18, resnet20
from funcnn.nn.models.unet import unet_small

KEY = jax.random.key(0)


def n_params(params) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(params))


def test_resnet18_has_torchvisions_parameter_count():
    # torchvision.models.resnet18() has 11,689,512 trainable parameters; shapes
    # only, so the 47 MB of weights are never drawn.
    _, params, state = jax.eval_shape(
        lambda k: resnet18().init(k, (-1, 3, 224, 224)), KEY
    )
    assert n_params(params) == 11_689_512
    # Running statistics are state: 2 x the BatchNorm channels, not params.
    bn_channels = sum(a.shape[0] for a in jax.tree.leaves(state)) // 2
    assert bn_channels == 4800


def test_resnet20_is_the_papers_size():
    _, params, _ = jax.eval_shape(lambda k: resnet20().init(k, (-1, 3, 32, 32)), KEY)
    assert abs(n_params(params) - 270_000) <= 0.01 * 270_000


def test_resnet18_small_inputs_keeps_the_resolution_for_longer():
    # The 3x3/1 stem without max pool: 32x32 reaches the last stage at 4x4.
    model = resnet18(10, small_inputs=True)
    out, params, _ = model.init(KEY, (-1, 3, 32, 32))
    assert out == (-1, 10)
    assert params["00_conv"]["w"].shape == (64, 3, 3, 3)
    assert "03_maxpool" not in params


def test_shortcut_a_subsamples_and_zero_pads():
    x = jnp.arange(2 * 2 * 4 * 4, dtype=jnp.float32).reshape(2, 2, 4, 4)
    layer = ShortcutA(5, stride=2)
    shape, _, _ = layer.init(KEY, (-1, 2, 4, 4))
    y, _ = layer.apply({}, {}, x)
    assert shape == (-1, 5, 2, 2) and y.shape == (2, 5, 2, 2)
    np.testing.assert_array_equal(y[:, :2], np.asarray(x)[:, :, ::2, ::2])
    np.testing.assert_array_equal(y[:, 2:], 0.0)


SMALL_MODELS = {  # name -> (make(layout), NCHW input shape, output rank)
    "resnet20": (lambda L: resnet20(10, depth=8, layout=L), (2, 3, 8, 8), 2),
    "resnet18": (lambda L: resnet18(10, layout=L), (2, 3, 32, 32), 2),
    "mobilenet_v1": (
        lambda L: mobilenet_v1(10, width=0.25, small_inputs=True, layout=L),
        (2, 3, 16, 16),
        2,
    ),
    "unet_small": (
        lambda L: unet_small(3, width=4, depth=2, layout=L),
        (2, 3, 8, 8),
        4,
    ),
}


def _to(layout, a):
    """An NCHW array (or an NHWC one back) for rank-4 arrays; others unchanged."""
    if a.ndim != 4:
        return a
    return a.transpose(0, 2, 3, 1) if layout == "NHWC" else a.transpose(0, 3, 1, 2)


# ResNet-18 compiles for about 30 s on 2 cores in both layouts and modes: behind
# the slow marker, so that CI stays under 15 minutes. Its blocks run here in
# resnet20, and the model itself in the test_resnet18_* tests above.
HEAVY = ("resnet18",)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
     for n in sorted(SMALL_MODELS)],
)  # fmt: skip
def test_models_in_both_layouts_and_both_grad_modes(name):
    # init's shape equals apply's in both layouts; the custom rules equal autodiff;
    # NHWC equals NCHW transposed, values and every gradient, with the same params.
    # float64, so that the patches formulation of the first conv (another
    # summation order) and BatchNorm over 2 examples cannot blur a real difference.
    make, shape, rank = SMALL_MODELS[name]
    nchw = make("NCHW")
    out_shape, params, state = nchw.init(KEY, (-1,) + shape[1:])
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    out_nchw = (shape[0],) + out_shape[1:]
    cot = jax.random.normal(jax.random.key(3), out_nchw, jnp.float64)

    def vjp(model, layout, grad):
        def f(p, x):
            if layout == "NHWC":
                x = _to("NHWC", x)
            out, _ = model.apply(p, state, x, train=True, grad=grad)
            return _to("NCHW", out) if layout == "NHWC" else out

        out, pull = jax.vjp(f, params, x)
        return out, pull(cot)

    nhwc = make("NHWC")
    shape_h, params_h, _ = nhwc.init(KEY, (-1,) + _to("NHWC", x).shape[1:])
    assert jax.tree.structure(params_h) == jax.tree.structure(params)
    runs = {
        "custom": fast_jit(lambda: vjp(nchw, "NCHW", "custom"))(),
        "autodiff": fast_jit(lambda: vjp(nchw, "NCHW", "autodiff"))(),
        "nhwc": fast_jit(lambda: vjp(nhwc, "NHWC", "custom"))(),
    }
    assert runs["custom"][0].shape == out_nchw and len(out_nchw) == rank
    assert shape_h == (-1,) + _to("NHWC", runs["nhwc"][0]).shape[1:]
    for other in ("autodiff", "nhwc"):
        out, (dp, dx) = runs[other]
        assert_close(out, runs["custom"][0], 1e-10)
        assert_close(dx, runs["custom"][1][1], 1e-9)
        for a, b in zip(jax.tree.leaves(dp), jax.tree.leaves(runs["custom"][1][0])):
            assert_close(a, b, 1e-9)


def test_unet_concatenates_its_skips():
    # Two levels: the first skip joins 4 upsampled channels to 4, the second 8 to 8.
    model = unet_small(3, width=4, depth=2)
    out, params, _ = model.init(KEY, (-1, 1, 8, 8))
    assert out == (-1, 3, 8, 8)
    paths = fn.leaf_paths(model)
    assert sum(p.endswith("concat") for p in paths) == 2
    assert sum(p.endswith("convtranspose") for p in paths) == 2
    ups = [p for p in paths if p.endswith("convtranspose")]
    # IOHW filters: (C_in, C_out, 2, 2) doubling H and W.
    sub = params
    for key in ups[0].split("/"):
        sub = sub[key]
    assert sub["w"].shape == (16, 8, 2, 2)
    with pytest.raises(ValueError, match="unet_small: expected layout"):
        unet_small(layout="HWCN")


def test_bf16_step_keeps_float32_state_and_tracks_float32():
    model = fn.lenet(10, input_hw=(8, 8), width=2, second_kernel=3)
    opt = fn.make_optimizer("adam", 3e-3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    losses = {}
    for name, dtype in (("f32", None), ("bf16", jnp.bfloat16)):
        state = fn.create_train_state(model, (-1, 1, 8, 8), opt, seed=0)
        step = fn.make_train_step(model, opt, compute_dtype=dtype)
        for _ in range(5):
            state, metrics = step(state, (x, y))
        losses[name] = float(metrics["loss"])
        dtypes = {a.dtype for a in jax.tree.leaves((state.params, state.opt_state))}
        assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}, dtypes
    assert abs(losses["bf16"] - losses["f32"]) <= 0.05 * losses["f32"] + 0.02


def test_bf16_runs_the_convs_in_bf16():
    model = fn.serial(fn.Conv2D(4, 3), fn.Flatten(), fn.Dense(3))
    opt = fn.make_optimizer("sgd", 0.1)
    state = fn.create_train_state(model, (-1, 1, 6, 6), opt)
    step = fn.make_train_step(model, opt, compute_dtype="bfloat16", jit=False)
    batch = (jnp.ones((2, 1, 6, 6)), jnp.zeros((2,), jnp.int32))
    text = str(jax.make_jaxpr(step)(state, batch))
    assert "conv_general_dilated" in text and "bf16[2,4,4,4]" in text


def test_bad_compute_dtype_is_named():
    model = fn.serial(fn.Dense(2))
    with pytest.raises(ValueError, match="make_train_step: expected compute_dtype in"):
        fn.make_train_step(model, fn.make_optimizer("sgd", 0.1), compute_dtype="int8")


def test_random_crop_flip_matches_a_hand_shift():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    out = random_crop_flip(x, np.random.default_rng(0), pad=1)
    # Recompute from the same draws, by hand.
    rng = np.random.default_rng(0)
    dy, dx = rng.integers(0, 3, size=(2, 2))
    flip = rng.random(2) < 0.5
    for i in range(2):
        padded = np.pad(x[i, 0], 1)
        want = padded[dy[i] : dy[i] + 4, dx[i] : dx[i] + 4]
        if flip[i]:
            want = want[:, ::-1]
        np.testing.assert_array_equal(out[i, 0], want)


TORCH_RESNETS = """
import sys
sys.path.insert(0, configs[0]["root"])
from benchmarks import torch_models

torch.set_default_dtype(torch.float64)
for cfg in configs:
    model = getattr(torch_models, cfg["name"])(10, **cfg["kwargs"])
    params = list(model.parameters())
    given = [data[f"{cfg['name']}_p{i}"] for i in range(cfg["n_params"])]
    assert len(params) == len(given), (len(params), len(given))
    with torch.no_grad():
        for p, a in zip(params, given):
            assert tuple(p.shape) == a.shape, (tuple(p.shape), a.shape)
            p.copy_(torch.from_numpy(a))
    model.eval()
    save(cfg["name"], model(t(cfg["name"] + "_x")))
    save(cfg["name"] + "_count", np.asarray(sum(p.numel() for p in params)))
"""


def test_resnets_equal_their_pytorch_twins(run_torch):
    # The same weights in both frameworks (in forward order: conv w, BatchNorm
    # scale and bias, dense w and b), evaluation mode: the same logits.
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    cases = [
        ("resnet20", resnet20(10), {}, (2, 3, 16, 16)),
        ("resnet18", resnet18(10), {}, (2, 3, 32, 32)),
    ]
    arrays, configs, ours = {}, [], {}
    for name, model, kwargs, shape in cases:
        _, params, state = model.init(KEY, (-1,) + shape[1:])
        # float64 throughout, the running statistics too.
        params, state = jax.tree.map(lambda a: a.astype(jnp.float64), (params, state))
        x = jax.random.normal(jax.random.key(5), shape, jnp.float64)
        logits = fast_jit(model.apply)(params, state, x)[0]
        ours[name] = (logits, n_params(params))
        leaves = []
        for path, _ in fn.nn.walk(model):
            sub = params
            for key in path.split("/"):
                sub = sub[key]
            names = ("w", "b") if "w" in sub else ("scale", "bias")
            leaves += [np.asarray(sub[k]) for k in names if k in sub]
        arrays.update({f"{name}_p{i}": a for i, a in enumerate(leaves)})
        arrays[f"{name}_x"] = np.asarray(x)
        configs.append(
            {"name": name, "kwargs": kwargs, "n_params": len(leaves), "root": root}
        )
    theirs = run_torch(TORCH_RESNETS, arrays, configs)
    for name, (logits, count) in ours.items():
        assert int(theirs[name + "_count"]) == count
        assert_close(logits, theirs[name], 1e-10)


def test_lenet5_has_biotorchs_lenet_mnist_size_and_shapes():
    # BioTorch's LeNetMNIST: conv 1->6 5x5, conv 6->16 5x5, conv 16->120 5x5,
    # dense 120->84, dense 84->10, every one with a bias.
    count = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (120 * 16 * 25 + 120)
    count += (120 * 84 + 84) + (84 * 10 + 10)
    for hw in [(28, 28), (32, 32)]:
        model = fn.models.lenet5(input_hw=hw)
        # Shapes only: init's predicted shape, and apply's on a batch of 2.
        predicted = []

        def init(key, model=model, hw=hw, predicted=predicted):
            out, params, state = model.init(key, (-1, 1, *hw))
            predicted.append(out)
            return params, state

        params, state = jax.eval_shape(init, KEY)
        assert predicted[-1] == (-1, 10) and n_params(params) == count == 61_706
        x = jax.ShapeDtypeStruct((2, 1, *hw), jnp.float32)
        y, _ = jax.eval_shape(model.apply, params, state, x)
        assert y.shape == (2, 10)
    with pytest.raises(ValueError, match=r"lenet5: expected input_hw \(28, 28\)"):
        fn.models.lenet5(input_hw=(8, 8))


TORCH_LENET5 = """
torch.set_default_dtype(torch.float64)
x = t("x")
p = [t(f"p{i}") for i in range(10)]
h = F.max_pool2d(F.relu(F.conv2d(x, p[0], p[1], padding=2)), 2)
h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3])), 2)
h = F.relu(F.conv2d(h, p[4], p[5])).flatten(1)
save("logits", F.linear(F.linear(h, p[6], p[7]), p[8], p[9]))
"""


def test_lenet5_equals_biotorchs_lenet_mnist_written_in_pytorch(run_torch):
    model = fn.models.lenet5()
    params, state = fast_jit(lambda k: model.init(k, (-1, 1, 28, 28))[1:])(KEY)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(7), (3, 1, 28, 28), jnp.float64)
    ours = fast_jit(model.apply)(params, state, x)[0]
    order = ["00_conv", "03_conv", "06_conv", "09_dense", "10_dense"]
    leaves = [np.asarray(params[k][w]) for k in order for w in ("w", "b")]
    arrays = {f"p{i}": a for i, a in enumerate(leaves)} | {"x": np.asarray(x)}
    theirs = run_torch(TORCH_LENET5, arrays, [])
    assert_close(ours, theirs["logits"], 1e-12)

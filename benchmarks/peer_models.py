"""The benchmark's train-step models written in Flax (linen and NNX) and Equinox,
each in its framework's idiomatic form and native layout.

Flax's convolutions and pools take channels-last `(N, H, W, C)` images; Equinox
layers act on one `(C, H, W)` example and are `jax.vmap`ped over the batch (with
a named batch axis for BatchNorm). The architectures are funcnn's
(`funcnn.models`): "lenet" (LeNet-5 at 28x28), "vgg_nobn" (conv32-conv32-pool-
conv64-conv64-pool-dense, 3x3 "SAME" convs with bias, no BatchNorm or dropout)
and "resnet20" (He et al.'s CIFAR ResNet-20, option-A shortcuts, BatchNorm with
momentum 0.1 in PyTorch's convention and eps 1e-5). Initial weights differ
between frameworks; shapes, parameter counts and FLOPs do not.

Each `*_step(name, input_shape, optimizer)` returns `(run, lower)`: `run()` takes
one train step on a fixed batch (its framework's usual jit around its usual
update) and returns the loss; `lower()` lowers that same jitted step (for the
HLO and XLA's cost analysis), whose compilation the first `run()` then reuses.

Imported only when flax and equinox are installed (`pip install funcnn[bench]`).
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training import train_state

NUM_CLASSES = 10
BN_MOMENTUM = 0.9  # Flax's and Equinox's convention: 1 - PyTorch's 0.1
BN_EPS = 1e-5


def _loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def batch(input_shape, layout: str):
    """The fixed batch `(x, y)`: x of `input_shape` (NCHW) in `layout`."""
    x = jax.random.normal(jax.random.PRNGKey(2), tuple(input_shape))
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return x, jnp.arange(input_shape[0], dtype=jnp.int32) % NUM_CLASSES


# ------------------------------------------------------------------ Flax linen


class LinenLeNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.Conv(6, (5, 5), padding=2)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(NUM_CLASSES)(x)


class LinenVGG(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        for channels in (32, 32, "pool", 64, 64, "pool"):
            if channels == "pool":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME")(x))
        return nn.Dense(NUM_CLASSES)(x.reshape((x.shape[0], -1)))


class LinenBlock(nn.Module):
    channels: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPS,
        )
        conv = partial(nn.Conv, self.channels, (3, 3), padding=1, use_bias=False)
        y = nn.relu(norm()(conv(strides=self.stride)(x)))
        y = norm()(conv()(y))
        short = x
        if self.stride != 1 or x.shape[-1] != self.channels:  # option A
            short = x[:, :: self.stride, :: self.stride, :]
            extra = self.channels - x.shape[-1]
            short = jnp.pad(short, ((0, 0), (0, 0), (0, 0), (0, extra)))
        return nn.relu(y + short)


class LinenResNet20(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(16, (3, 3), padding=1, use_bias=False)(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS
        )(x)
        x = nn.relu(x)
        for stage, channels in enumerate((16, 32, 64)):
            for i in range(3):
                x = LinenBlock(channels, 2 if stage > 0 and i == 0 else 1)(x, train)
        return nn.Dense(NUM_CLASSES)(x.mean(axis=(1, 2)))


LINEN = {"lenet": LinenLeNet, "vgg_nobn": LinenVGG, "resnet20": LinenResNet20}


class LinenState(train_state.TrainState):
    batch_stats: dict


def linen_step(name: str, input_shape, optimizer):
    """Flax linen, NHWC: `flax.training.train_state`, one `jax.jit` step."""
    model = LINEN[name]()
    x, y = batch(input_shape, "NHWC")
    variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
    state = LinenState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optimizer,
        batch_stats=variables.get("batch_stats", {}),
    )

    def step(state, x, y):
        def loss_fn(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return _loss(logits, y), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads)
        return state.replace(batch_stats=updates.get("batch_stats", {})), loss

    jitted = jax.jit(step)
    box = {"state": state}

    def run():
        box["state"], loss = jitted(box["state"], x, y)
        return loss

    return run, lambda: jitted.lower(box["state"], x, y)


# ------------------------------------------------------------------- Flax NNX


class NnxLeNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 6, (5, 5), padding=2, rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(16 * 5 * 5, 120, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


class NnxVGG(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.convs = nnx.List(
            nnx.Conv(c_in, c_out, (3, 3), padding="SAME", rngs=rngs)
            for c_in, c_out in ((3, 32), (32, 32), (32, 64), (64, 64))
        )
        self.head = nnx.Linear(64 * 8 * 8, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        for i, conv in enumerate(self.convs):
            x = nnx.relu(conv(x))
            if i % 2:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        return self.head(x.reshape((x.shape[0], -1)))


def _nnx_norm(channels: int, rngs: nnx.Rngs):
    return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)


class NnxBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(
            c_in, c_out, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs
        )
        self.bn1 = _nnx_norm(c_out, rngs)
        self.conv2 = nnx.Conv(
            c_out, c_out, (3, 3), padding=1, use_bias=False, rngs=rngs
        )
        self.bn2 = _nnx_norm(c_out, rngs)
        self.stride, self.extra = stride, c_out - c_in

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        short = x[:, :: self.stride, :: self.stride, :]
        if self.extra:  # option A
            short = jnp.pad(short, ((0, 0), (0, 0), (0, 0), (0, self.extra)))
        return nnx.relu(y + short)


class NnxResNet20(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 16, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn = _nnx_norm(16, rngs)
        blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(NnxBlock(c_in, c_out, stride, rngs))
                c_in = c_out
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(64, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


NNX = {"lenet": NnxLeNet, "vgg_nobn": NnxVGG, "resnet20": NnxResNet20}


def _nnx_update(model, optimizer, x, y):
    def loss_fn(model):
        return _loss(model(x), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def nnx_step(name: str, input_shape, optimizer):
    """Flax NNX, NHWC: an `nnx.Optimizer` updated in place under `nnx.jit`."""
    model = NNX[name](nnx.Rngs(0))
    model.train()
    opt = nnx.Optimizer(model, optimizer, wrt=nnx.Param)
    x, y = batch(input_shape, "NHWC")
    jitted = nnx.jit(_nnx_update)
    return (lambda: jitted(model, opt, x, y)), lambda: jitted.lower(model, opt, x, y)


# -------------------------------------------------------------------- Equinox


class EqxLeNet(eqx.Module):
    layers: list

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.layers = [
            eqx.nn.Conv2d(1, 6, 5, padding=2, key=k[0]),
            jax.nn.relu,
            eqx.nn.MaxPool2d(2, 2),
            eqx.nn.Conv2d(6, 16, 5, key=k[1]),
            jax.nn.relu,
            eqx.nn.MaxPool2d(2, 2),
            jnp.ravel,
            eqx.nn.Linear(16 * 5 * 5, 120, key=k[2]),
            jax.nn.relu,
            eqx.nn.Linear(120, 84, key=k[3]),
            jax.nn.relu,
            eqx.nn.Linear(84, NUM_CLASSES, key=k[4]),
        ]

    def __call__(self, x, state):
        for layer in self.layers:
            x = layer(x)
        return x, state


class EqxVGG(eqx.Module):
    layers: list

    def __init__(self, key):
        k = jax.random.split(key, 5)
        conv = partial(eqx.nn.Conv2d, kernel_size=3, padding=1)
        self.layers = [
            conv(3, 32, key=k[0]),
            jax.nn.relu,
            conv(32, 32, key=k[1]),
            jax.nn.relu,
            eqx.nn.MaxPool2d(2, 2),
            conv(32, 64, key=k[2]),
            jax.nn.relu,
            conv(64, 64, key=k[3]),
            jax.nn.relu,
            eqx.nn.MaxPool2d(2, 2),
            jnp.ravel,
            eqx.nn.Linear(64 * 8 * 8, NUM_CLASSES, key=k[4]),
        ]

    def __call__(self, x, state):
        for layer in self.layers:
            x = layer(x)
        return x, state


def _eqx_norm(channels: int):
    return eqx.nn.BatchNorm(
        channels, "batch", eps=BN_EPS, momentum=BN_MOMENTUM, mode="batch"
    )


class EqxBlock(eqx.Module):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    stride: int = eqx.field(static=True)
    extra: int = eqx.field(static=True)

    def __init__(self, c_in: int, c_out: int, stride: int, key):
        k1, k2 = jax.random.split(key)
        self.conv1 = eqx.nn.Conv2d(
            c_in, c_out, 3, stride, padding=1, use_bias=False, key=k1
        )
        self.bn1 = _eqx_norm(c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, use_bias=False, key=k2)
        self.bn2 = _eqx_norm(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def __call__(self, x, state):
        y, state = self.bn1(self.conv1(x), state)
        y, state = self.bn2(self.conv2(jax.nn.relu(y)), state)
        short = x[:, :: self.stride, :: self.stride]
        if self.extra:  # option A
            short = jnp.pad(short, ((0, self.extra), (0, 0), (0, 0)))
        return jax.nn.relu(y + short), state


class EqxResNet20(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, key):
        keys = jax.random.split(key, 11)
        self.conv = eqx.nn.Conv2d(3, 16, 3, padding=1, use_bias=False, key=keys[0])
        self.bn = _eqx_norm(16)
        self.blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                key = keys[1 + len(self.blocks)]
                self.blocks.append(EqxBlock(c_in, c_out, stride, key))
                c_in = c_out
        self.head = eqx.nn.Linear(64, NUM_CLASSES, key=keys[10])

    def __call__(self, x, state):
        x, state = self.bn(self.conv(x), state)
        x = jax.nn.relu(x)
        for block in self.blocks:
            x, state = block(x, state)
        return self.head(x.mean(axis=(1, 2))), state


EQX = {"lenet": EqxLeNet, "vgg_nobn": EqxVGG, "resnet20": EqxResNet20}


def _eqx_update(model, state, opt_state, x, y, optimizer):
    def loss_fn(model, state):
        # One example per call, vmapped; BatchNorm reduces over the named axis.
        forward = jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )
        logits, state = forward(x, state)
        return _loss(logits, y), state

    (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
        model, state
    )
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), state, opt_state, loss


def equinox_step(name: str, input_shape, optimizer):
    """Equinox, NCHW: a vmapped per-example model and `eqx.filter_jit`."""
    model, state = eqx.nn.make_with_state(EQX[name])(jax.random.PRNGKey(0))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    x, y = batch(input_shape, "NCHW")
    jitted = eqx.filter_jit(partial(_eqx_update, optimizer=optimizer))
    box = {"carry": (model, state, opt_state)}

    def run():
        *box["carry"], loss = jitted(*box["carry"], x, y)
        box["carry"] = tuple(box["carry"])
        return loss

    # Equinox wraps jax's Lowered; `.lowered` is jax's own.
    return run, lambda: jitted.lower(*box["carry"], x, y).lowered


# -------------------------------------------------------------- counts, FLOPs


def param_count(tree) -> int:
    """Trainable scalars in a parameter pytree."""
    return sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))


def param_counts(name: str, input_shape) -> dict[str, int]:
    """Trainable parameters of each peer's model (BatchNorm statistics excluded)."""
    x, _ = batch(input_shape, "NHWC")
    linen = LINEN[name]().init(jax.random.PRNGKey(0), x[:1], train=False)
    nnx_model = NNX[name](nnx.Rngs(0))
    eqx_model, _ = eqx.nn.make_with_state(EQX[name])(jax.random.PRNGKey(0))
    return {
        "flax_linen": param_count(linen["params"]),
        "flax_nnx": param_count(nnx.state(nnx_model, nnx.Param)),
        "equinox": param_count(eqx.filter(eqx_model, eqx.is_inexact_array)),
    }


STEPS = {"flax_linen": linen_step, "flax_nnx": nnx_step, "equinox": equinox_step}
LAYOUT = {"flax_linen": "NHWC", "flax_nnx": "NHWC", "equinox": "NCHW"}

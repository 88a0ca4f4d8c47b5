"""Pure-function layers over parameter pytrees.

A layer is a `Layer(init, apply, name)`:

- `init(key, input_shape) -> (output_shape, params, state)` makes the parameters and
  predicts the output shape. Shapes include the batch axis, which may be -1.
- `apply(params, state, x, *, train=False, key=None, grad="custom") -> (y, state)`
  maps the input to the output and returns the (possibly updated) state.

`state` holds what is not trained by gradients (BatchNorm running statistics); it is
an empty dict for layers without any. `key` is a PRNG key for layers that need
randomness (Dropout, in training). `grad` selects the backward rule of every conv and
pool inside: "custom" or "autodiff".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnn import ops
from funcnn.ops import _args

Shape = tuple[int, ...]


class Layer(NamedTuple):
    """A layer: `init(key, input_shape)` and `apply(params, state, x, **kw)`."""

    init: Callable[..., tuple[Any, Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    name: str


def he_normal(key, shape: Shape, fan_in: int, dtype=jnp.float32):
    """Normal with std sqrt(2 / fan_in), suited to ReLU networks."""
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)


def _check_shape(name: str, shape, rank: int, axes: str) -> Shape:
    if not isinstance(shape, tuple) or len(shape) != rank:
        raise ValueError(
            f"{name}: expected an input shape of rank {rank} {axes}, got {shape!r}."
        )
    return shape


def _positive_int(name: str, arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected {arg} to be a positive int, got {value!r}.")
    return value


def Conv2D(
    out_channels: int,
    window,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    use_bias: bool = True,
    w_init=he_normal,
    dtype=jnp.float32,
) -> Layer:
    """Convolution layer over `(N, C_in, H, W)` -> `(N, C_out, OH, OW)`.

    Params: `{"w": (C_out, C_in // groups, KH, KW), "b": (C_out,)}` (no "b" without
    bias). Arguments as in `funcnn.ops.conv2d`.
    """
    name = "Conv2D"
    _positive_int(name, "out_channels", out_channels)
    kh, kw = _args.pair(name, "window", window)

    def init(key, input_shape):
        n, c, h, w = _check_shape(name, input_shape, 4, "(N, C_in, H, W)")
        if c % groups:
            raise ValueError(
                f"{name}: expected groups (={groups}) to divide C_in (={c})."
            )
        wshape = (out_channels, c // groups, kh, kw)
        params = {"w": w_init(key, wshape, (c // groups) * kh * kw, dtype)}
        if use_bias:
            params["b"] = jnp.zeros((out_channels,), dtype)
        # Shape prediction runs the op's own validation on a shape-only trace.
        out = jax.eval_shape(
            lambda x, w: ops.conv2d(
                x, w, stride=stride, padding=padding, dilation=dilation, groups=groups
            ),
            jax.ShapeDtypeStruct((max(n, 1), c, h, w), dtype),
            jax.ShapeDtypeStruct(wshape, dtype),
        )
        return (n,) + out.shape[1:], params, {}

    def apply(params, state, x, *, grad="custom", **_):
        y = ops.conv2d(
            x,
            params["w"],
            params.get("b"),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            grad=grad,
        )
        return y, state

    return Layer(init, apply, "conv")


def _pool_layer(name: str, short: str, op, window, **kwargs) -> Layer:
    def init(key, input_shape):
        del key
        n, c, h, w = _check_shape(name, input_shape, 4, "(N, C, H, W)")
        out = jax.eval_shape(
            lambda x: op(x, window, **kwargs),
            jax.ShapeDtypeStruct((max(n, 1), c, h, w), jnp.float32),
        )
        return (n,) + out.shape[1:], {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        return op(x, window, grad=grad, **kwargs), state

    return Layer(init, apply, short)


def MaxPool2D(window, *, stride=None, padding=0, dilation=1, ceil_mode=False) -> Layer:
    """Max pooling layer `(N, C, H, W)` -> `(N, C, OH, OW)`; see `ops.max_pool2d`."""
    return _pool_layer(
        "MaxPool2D",
        "maxpool",
        ops.max_pool2d,
        window,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
    )


def AvgPool2D(
    window, *, stride=None, padding=0, ceil_mode=False, count_include_pad=True
) -> Layer:
    """Mean pooling layer `(N, C, H, W)` -> `(N, C, OH, OW)`; see `ops.avg_pool2d`."""
    return _pool_layer(
        "AvgPool2D",
        "avgpool",
        ops.avg_pool2d,
        window,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )


def GlobalAvgPool2D() -> Layer:
    """Mean over all of H and W: `(N, C, H, W)` -> `(N, C)`, via `ops.avg_pool2d`."""
    name = "GlobalAvgPool2D"

    def init(key, input_shape):
        del key
        n, c, _, _ = _check_shape(name, input_shape, 4, "(N, C, H, W)")
        return (n, c), {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        y = ops.avg_pool2d(x, x.shape[2:], grad=grad)
        return y.reshape(y.shape[:2]), state

    return Layer(init, apply, "gap")


def Dense(
    out_features: int, *, use_bias: bool = True, w_init=he_normal, dtype=jnp.float32
) -> Layer:
    """Fully connected layer `(N, F_in)` -> `(N, F_out)`: `y = x @ w.T + b`.

    Params: `{"w": (F_out, F_in), "b": (F_out,)}`, so row j of w holds the weights
    into output unit j, as in the CNN texts and PyTorch.
    """
    name = "Dense"
    _positive_int(name, "out_features", out_features)

    def init(key, input_shape):
        n, f = _check_shape(name, input_shape, 2, "(N, F_in)")
        params = {"w": w_init(key, (out_features, f), f, dtype)}
        if use_bias:
            params["b"] = jnp.zeros((out_features,), dtype)
        return (n, out_features), params, {}

    def apply(params, state, x, **_):
        if x.ndim != 2 or x.shape[1] != params["w"].shape[1]:
            raise ValueError(
                f"{name}: expected x of shape (N, {params['w'].shape[1]}), got "
                f"{x.shape}. Add a Flatten() layer before Dense for image inputs."
            )
        y = x @ params["w"].T
        if "b" in params:
            y = y + params["b"]
        return y, state

    return Layer(init, apply, "dense")


def Flatten() -> Layer:
    """`(N, d1, d2, ...)` -> `(N, d1 * d2 * ...)`."""

    def init(key, input_shape):
        del key
        return (input_shape[0], math.prod(input_shape[1:])), {}, {}

    def apply(params, state, x, **_):
        del params
        return x.reshape(x.shape[0], -1), state

    return Layer(init, apply, "flatten")


def elementwise(fn: Callable, name: str) -> Layer:
    """A parameter-free layer applying `fn` to its input; shape is unchanged."""

    def init(key, input_shape):
        del key
        return input_shape, {}, {}

    def apply(params, state, x, **_):
        del params
        return fn(x), state

    return Layer(init, apply, name)


Relu = elementwise(jax.nn.relu, "relu")
Sigmoid = elementwise(jax.nn.sigmoid, "sigmoid")
Tanh = elementwise(jnp.tanh, "tanh")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """`max(x, negative_slope * x)` for 0 <= negative_slope < 1."""
    return elementwise(lambda x: jax.nn.leaky_relu(x, negative_slope), "leaky_relu")


def Softmax(axis: int = 1) -> Layer:
    """Softmax over `axis` (the class axis of `(N, K)` logits by default)."""
    return elementwise(lambda x: jax.nn.softmax(x, axis=axis), "softmax")


class BatchNormState(NamedTuple):
    mean: jax.Array  # shape=(C,) running mean
    var: jax.Array  # shape=(C,) running (unbiased) variance


def BatchNorm(*, momentum: float = 0.1, eps: float = 1e-5, dtype=jnp.float32) -> Layer:
    """Batch normalisation over `(N, C, H, W)` or `(N, C)`, per channel C.

    In training, normalises with the batch's statistics over N (and H, W) and
    returns the updated running statistics:
    `running = (1 - momentum) * running + momentum * batch` (PyTorch's convention;
    the running variance uses the unbiased batch variance). In evaluation it uses
    the running statistics and leaves them unchanged.

    Params: `{"scale": (C,), "bias": (C,)}`. State: `BatchNormState(mean, var)`.
    Under a data-parallel `jax.jit` the batch statistics are over the global batch.
    """
    name = "BatchNorm"
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name}: expected 0 <= momentum <= 1, got {momentum!r}.")

    def init(key, input_shape):
        del key
        if not isinstance(input_shape, tuple) or len(input_shape) not in (2, 4):
            raise ValueError(
                f"{name}: expected an input shape (N, C) or (N, C, H, W), got "
                f"{input_shape!r}."
            )
        c = input_shape[1]
        params = {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)}
        state = BatchNormState(jnp.zeros((c,), dtype), jnp.ones((c,), dtype))
        return input_shape, params, state

    def apply(params, state, x, *, train=False, **_):
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        bshape = (1, -1) + (1,) * (x.ndim - 2)
        if train:
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean.reshape(bshape)), axis=axes)
            count = math.prod(x.shape[a] for a in axes)
            unbiased = var * (count / max(count - 1, 1))
            state = BatchNormState(
                (1 - momentum) * state.mean + momentum * mean,
                (1 - momentum) * state.var + momentum * unbiased,
            )
        else:
            mean, var = state.mean, state.var
        inv = jax.lax.rsqrt(var + eps) * params["scale"]
        y = (x - mean.reshape(bshape)) * inv.reshape(bshape) + params["bias"].reshape(
            bshape
        )
        return y, state

    return Layer(init, apply, "batchnorm")


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in training each unit is *dropped* with probability `rate`
    and survivors are scaled by 1 / (1 - rate); identity in evaluation.

    Needs `key=` in `apply` when training.
    """
    name = "Dropout"
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"{name}: expected 0 <= rate < 1 (the probability of dropping), "
            f"got {rate!r}."
        )

    def init(key, input_shape):
        del key
        return input_shape, {}, {}

    def apply(params, state, x, *, train=False, key=None, **_):
        del params
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError(
                f"{name}: expected a PRNG key in training (apply(..., train=True, "
                "key=jax.random.key(0))), got key=None."
            )
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)), state

    return Layer(init, apply, "dropout")

"""Dense, Flatten, activation and Dropout layers."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from funcnn import ops, rules
from funcnn.nn.core import (
    Layer,
    LayerInfo,
    check_shape,
    he_normal,
    leaf,
    positive_int,
)
from funcnn.ops import _args


def Dense(
    out_features: int, *, use_bias: bool = True, w_init=he_normal, dtype=jnp.float32
) -> Layer:
    """Fully connected layer `(N, F_in)` -> `(N, F_out)`: `y = x @ w.T + b`.

    Params: `{"w": (F_out, F_in), "b": (F_out,)}`, so row j of w holds the weights
    into output unit j, as in the CNN texts and PyTorch. Runs `funcnn.ops.dense`,
    so `grad=` picks its backward rule as for convolutions.
    """
    label = "Dense"
    positive_int(label, "out_features", out_features)
    info = LayerInfo("dense", w_init)

    def init(key, input_shape):
        n, f = check_shape(label, input_shape, 2, "(N, F_in)")
        if f < 1:
            raise ValueError(
                f"{label}: expected at least one input feature, got input shape "
                f"{input_shape}."
            )
        params = {"w": w_init(key, (out_features, f), f, dtype)}
        if use_bias:
            params["b"] = jnp.zeros((out_features,), dtype)
        return (n, out_features), params, {}

    def apply(params, state, x, *, grad="custom", **_):
        if x.ndim != 2 or x.shape[1] != params["w"].shape[1]:
            hint = (
                " Add a Flatten() layer before Dense for image inputs."
                if x.ndim > 2
                else ""
            )
            raise ValueError(
                f"{label}: expected x of shape (N, {params['w'].shape[1]}), got "
                f"{x.shape}.{hint}"
            )
        rule = rules.layer_rule(grad, layer=label, info=info, w=params["w"])
        return ops.dense(x, params["w"], params.get("b"), grad=rule), state

    return leaf(label, "dense", init, apply, param_keys=("w",), info=info)


def Flatten(*, layout: str = "NCHW") -> Layer:
    """`(N, d1, d2, ...)` -> `(N, d1 * d2 * ...)`, in channels-first order.

    With layout="NHWC" the input's last axis is its channels: `(N, H, W, C)` is
    flattened as its `(N, C, H, W)` transpose would be, so a Dense layer after it
    has the same parameters in both layouts.
    """
    label = "Flatten"
    _args.check_layout(label, layout)

    def init(key, input_shape):
        del key
        return (input_shape[0], math.prod(input_shape[1:])), {}, {}

    def apply(params, state, x, **_):
        del params
        if layout == "NHWC" and x.ndim > 2:
            x = jnp.moveaxis(x, -1, 1)
        return x.reshape(x.shape[0], -1), state

    return leaf(label, "flatten", init, apply)


def elementwise(fn: Callable, name: str, label: str | None = None) -> Layer:
    """A parameter-free layer applying `fn` to its input; shape is unchanged."""

    def init(key, input_shape):
        del key
        return input_shape, {}, {}

    def apply(params, state, x, **_):
        del params
        return fn(x), state

    return leaf(label or name, name, init, apply)


def Relu() -> Layer:
    """`max(x, 0)`."""
    return elementwise(jax.nn.relu, "relu", "Relu")


def Sigmoid() -> Layer:
    """`1 / (1 + exp(-x))`."""
    return elementwise(jax.nn.sigmoid, "sigmoid", "Sigmoid")


def Tanh() -> Layer:
    """`tanh(x)`."""
    return elementwise(jnp.tanh, "tanh", "Tanh")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """`max(x, negative_slope * x)` for 0 <= negative_slope < 1."""
    if not 0.0 <= negative_slope < 1.0:
        raise ValueError(
            f"LeakyRelu: expected 0 <= negative_slope < 1, got {negative_slope!r}."
        )
    return elementwise(
        lambda x: jax.nn.leaky_relu(x, negative_slope), "leaky_relu", "LeakyRelu"
    )


def Softmax(axis: int = 1) -> Layer:
    """Softmax over `axis` (the class axis of `(N, K)` logits by default)."""
    return elementwise(lambda x: jax.nn.softmax(x, axis=axis), "softmax", "Softmax")


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in training each unit is *dropped* with probability `rate`
    and survivors are scaled by 1 / (1 - rate); identity in evaluation.

    Needs `key=` in `apply` when training.
    """
    label = "Dropout"
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"{label}: expected 0 <= rate < 1 (the probability of dropping), "
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
                f"{label}: expected a PRNG key in training (apply(..., train=True, "
                "key=jax.random.key(0))), got key=None."
            )
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)), state

    return leaf(label, "dropout", init, apply)

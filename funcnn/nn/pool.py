"""Pooling layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn import ops, rules
from funcnn.nn.core import Layer, LayerInfo, check_shape, leaf
from funcnn.ops import _args


def _pool_layer(label: str, name: str, op, window, **kwargs) -> Layer:
    info = LayerInfo(op.__name__)

    def init(key, input_shape):
        del key
        n, c, h, w = check_shape(label, input_shape, 4, "(N, C, H, W)")
        out = jax.eval_shape(
            lambda x: op(x, window, **kwargs),
            jax.ShapeDtypeStruct((max(n, 1), c, h, w), jnp.float32),
        )
        return (n,) + out.shape[1:], {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        rule = rules.layer_rule(grad, layer=label, info=info)
        return op(x, window, grad=rule, **kwargs), state

    return leaf(label, name, init, apply, info=info)


def MaxPool2D(
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] | None = None,
    padding: _args.PaddingSpec = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
) -> Layer:
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
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] | None = None,
    padding: _args.PaddingSpec = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
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
    label = "GlobalAvgPool2D"
    info = LayerInfo("avg_pool2d")

    def init(key, input_shape):
        del key
        n, c, _, _ = check_shape(label, input_shape, 4, "(N, C, H, W)")
        return (n, c), {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        rule = rules.layer_rule(grad, layer=label, info=info)
        y = ops.avg_pool2d(x, x.shape[2:], grad=rule)
        return y.reshape(y.shape[:2]), state

    return leaf(label, "gap", init, apply, info=info)

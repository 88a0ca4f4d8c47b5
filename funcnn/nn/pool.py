"""Pooling layers: max, mean, global mean, adaptive, and max unpooling.

Every layer takes `layout="NCHW"` (inputs `(N, C, H, W)`) or `"NHWC"` (`(N, H, W,
C)`). A max pool built with `return_indices=True` outputs the pair `(y, indices)`,
and `MaxUnpool2D` takes that pair; `parallel(decoder, Identity())` carries the
indices past the layers in between (see `MaxUnpool2D`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from funcnn import ops, rules
from funcnn.nn.core import Layer, LayerInfo, check_shape, leaf
from funcnn.ops import _args


def _predict(fn, input_shape, dtypes=(jnp.float32,)):
    """Output shape(s) of `fn` on inputs of `input_shape` (a shape, or a tuple of
    shapes), with the batch size kept as given (it may be -1)."""
    shapes = input_shape if isinstance(input_shape[0], tuple) else (input_shape,)
    n = shapes[0][0]
    specs = [
        jax.ShapeDtypeStruct((max(n, 1),) + tuple(s[1:]), d)
        for s, d in zip(shapes, dtypes)
    ]
    out = jax.eval_shape(fn, *specs)
    if isinstance(out, tuple):
        return tuple((n,) + o.shape[1:] for o in out)
    return (n,) + out.shape[1:]


def _pool_layer(label: str, name: str, op, *args, layout: str, **kwargs) -> Layer:
    _args.check_layout(label, layout)
    axes = _args.axes_text(layout)
    info = LayerInfo(op.__name__)

    def init(key, input_shape):
        del key
        check_shape(label, input_shape, 4, axes)
        out = _predict(lambda x: op(x, *args, layout=layout, **kwargs), input_shape)
        return out, {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        rule = rules.layer_rule(grad, layer=label, info=info)
        return op(x, *args, layout=layout, grad=rule, **kwargs), state

    return leaf(label, name, init, apply, info=info)


def MaxPool2D(
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] | None = None,
    padding: _args.PaddingSpec = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    layout: str = "NCHW",
) -> Layer:
    """Max pooling layer `(N, C, H, W)` -> `(N, C, OH, OW)`; see `ops.max_pool2d`.

    With return_indices=True the output is the pair `(y, indices)`, for a
    `MaxUnpool2D` further on.
    """
    return _pool_layer(
        "MaxPool2D",
        "maxpool",
        ops.max_pool2d,
        window,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
        return_indices=return_indices,
        layout=layout,
    )


def AvgPool2D(
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] | None = None,
    padding: _args.PaddingSpec = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    layout: str = "NCHW",
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
        layout=layout,
    )


def AdaptiveAvgPool2D(
    output_size: int | tuple[int | None, int | None], *, layout: str = "NCHW"
) -> Layer:
    """Adaptive mean pooling to `(N, C, OH, OW)` from any `(N, C, H, W)`; see
    `ops.adaptive_avg_pool2d`."""
    return _pool_layer(
        "AdaptiveAvgPool2D",
        "adaptiveavgpool",
        ops.adaptive_avg_pool2d,
        output_size,
        layout=layout,
    )


def AdaptiveMaxPool2D(
    output_size: int | tuple[int | None, int | None],
    *,
    return_indices: bool = False,
    layout: str = "NCHW",
) -> Layer:
    """Adaptive max pooling to `(N, C, OH, OW)` from any `(N, C, H, W)`; see
    `ops.adaptive_max_pool2d`. With return_indices=True the output is the pair
    `(y, indices)`."""
    return _pool_layer(
        "AdaptiveMaxPool2D",
        "adaptivemaxpool",
        ops.adaptive_max_pool2d,
        output_size,
        return_indices=return_indices,
        layout=layout,
    )


def GlobalAvgPool2D(*, layout: str = "NCHW") -> Layer:
    """Mean over all of H and W: `(N, C, H, W)` (or NHWC) -> `(N, C)`."""
    label = "GlobalAvgPool2D"
    info = LayerInfo("avg_pool2d")
    _args.check_layout(label, layout)

    def init(key, input_shape):
        del key
        shape = check_shape(label, input_shape, 4, _args.axes_text(layout))
        n, c, _, _ = _args.nchw_shape(shape, layout)
        return (n, c), {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        hw = tuple(x.shape[a] for a in _args.spatial_axes(layout))
        rule = rules.layer_rule(grad, layer=label, info=info)
        y = ops.avg_pool2d(x, hw, layout=layout, grad=rule)
        return jnp.reshape(jnp.asarray(y), (x.shape[0], -1)), state

    return leaf(label, "gap", init, apply, info=info)


def MaxUnpool2D(
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    output_size: tuple[int, int] | None = None,
    layout: str = "NCHW",
) -> Layer:
    """Max unpooling: the pair `(y, indices)` of a `MaxPool2D(...,
    return_indices=True)` -> `(N, C, H, W)`, each value back at its index, zeros
    elsewhere; see `ops.max_unpool2d`. Give it the pool's window, stride and
    padding, and `output_size=(H, W)` where the pool dropped rows or columns.

    The pool's pair reaches the unpool through the layers in between with
    `parallel`, which applies its i-th layer to the i-th element of a tuple:

        serial(
            Conv2D(16, 3, padding=1), Relu(),
            MaxPool2D(2, return_indices=True),          # -> (y, indices)
            parallel(serial(Conv2D(16, 3, padding=1), Relu()), Identity()),
            MaxUnpool2D(2),                             # (y', indices) -> (N, 16, H, W)
            Conv2D(1, 3, padding=1),
        )
    """
    label = "MaxUnpool2D"
    _args.check_layout(label, layout)
    axes = _args.axes_text(layout)

    kwargs: dict[str, Any] = dict(
        stride=stride, padding=padding, output_size=output_size, layout=layout
    )

    def unpool(y, indices, grad="custom"):
        return ops.max_unpool2d(y, indices, window, grad=grad, **kwargs)

    def init(key, input_shape):
        del key
        if (
            not isinstance(input_shape, tuple)
            or len(input_shape) != 2
            or not all(isinstance(s, tuple) for s in input_shape)
        ):
            raise ValueError(
                f"{label}: expected the input shapes (values, indices) of a "
                f"MaxPool2D(..., return_indices=True), got {input_shape!r}."
            )
        for s in input_shape:
            check_shape(label, s, 4, axes)
        out = _predict(unpool, input_shape, (jnp.float32, jnp.int32))
        return out, {}, {}

    def apply(params, state, x, *, grad="custom", **_):
        del params
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ValueError(
                f"{label}: expected the pair (values, indices) from a "
                f"MaxPool2D(..., return_indices=True), got {type(x).__name__}."
            )
        return unpool(*x, grad=rules.pick(grad, layer=label)), state

    return leaf(label, "maxunpool", init, apply)

"""Convolution layers: Conv2D and ConvTranspose2D."""

from __future__ import annotations

from typing import Any

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


def _input_channels(label: str, input_shape, layout: str) -> int:
    shape = check_shape(label, input_shape, 4, _args.axes_text(layout, "C_in"))
    c = _args.nchw_shape(shape, layout)[1]
    if c < 1:
        raise ValueError(
            f"{label}: expected at least one input channel, got input shape "
            f"{input_shape}."
        )
    return c


def _check_groups(label: str, c: int, out_channels: int, groups: int) -> None:
    if c % groups or out_channels % groups:
        raise ValueError(
            f"{label}: expected groups (={groups}) to divide C_in (={c}) and "
            f"out_channels (={out_channels})."
        )


def _predict(fn, input_shape, w_shape, dtype):
    """Output shape of `fn(x, w)`, by the op's own validation on a shape-only
    trace; the batch size is kept as given (it may be -1)."""
    n = input_shape[0]
    out = jax.eval_shape(
        fn,
        jax.ShapeDtypeStruct((max(n, 1),) + tuple(input_shape[1:]), dtype),
        jax.ShapeDtypeStruct(w_shape, dtype),
    )
    return (n,) + out.shape[1:]


def Conv2D(
    out_channels: int,
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: _args.PaddingSpec = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init=he_normal,
    dtype=jnp.float32,
    layout: str = "NCHW",
) -> Layer:
    """Convolution layer over `(N, C_in, H, W)` -> `(N, C_out, OH, OW)` (or both
    NHWC with layout="NHWC").

    Params: `{"w": (C_out, C_in // groups, KH, KW), "b": (C_out,)}` (no "b" without
    bias), the same in both layouts. Arguments as in `funcnn.ops.conv2d`;
    `w_init(key, shape, fan_in, dtype)` draws the filters (He normal by default).
    """
    label = "Conv2D"
    positive_int(label, "out_channels", out_channels)
    positive_int(label, "groups", groups)
    kh, kw = _args.pair(label, "window", window)
    _args.check_layout(label, layout)
    info = LayerInfo("conv2d", w_init, layout)
    kwargs: dict[str, Any] = dict(
        stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout
    )

    def init(key, input_shape):
        c = _input_channels(label, input_shape, layout)
        _check_groups(label, c, out_channels, groups)
        wshape = (out_channels, c // groups, kh, kw)
        params = {"w": w_init(key, wshape, (c // groups) * kh * kw, dtype)}
        if use_bias:
            params["b"] = jnp.zeros((out_channels,), dtype)
        out = _predict(
            lambda x, w: ops.conv2d(x, w, **kwargs), input_shape, wshape, dtype
        )
        return out, params, {}

    def apply(params, state, x, *, grad="custom", **_):
        y = ops.conv2d(
            x,
            params["w"],
            params.get("b"),
            grad=rules.layer_rule(grad, layer=label, info=info, w=params["w"]),
            **kwargs,
        )
        return y, state

    return leaf(label, "conv", init, apply, param_keys=("w",), info=info)


def ConvTranspose2D(
    out_channels: int,
    window: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    use_bias: bool = True,
    w_init=he_normal,
    dtype=jnp.float32,
    layout: str = "NCHW",
) -> Layer:
    """Transposed convolution layer `(N, C_in, H, W)` -> `(N, C_out, OH, OW)` (or
    NHWC), `OH = (H - 1)*SH - top - bottom + DH*(KH - 1) + output_padding + 1`.

    Params: `{"w": (C_in, C_out // groups, KH, KW), "b": (C_out,)}`, PyTorch's
    ConvTranspose2d layout in both activation layouts. Arguments as in
    `funcnn.ops.conv_transpose2d`. `w_init` gets as fan-in the number of inputs
    that reach one output, `(C_in // groups) * ceil(KH / SH) * ceil(KW / SW)`.
    """
    label = "ConvTranspose2D"
    positive_int(label, "out_channels", out_channels)
    positive_int(label, "groups", groups)
    kh, kw = _args.pair(label, "window", window)
    sh, sw = _args.pair(label, "stride", stride)
    _args.check_layout(label, layout)
    # Named so that a model-level check refuses rules that do not rewrite it.
    info = LayerInfo("conv_transpose2d", w_init)
    kwargs: dict[str, Any] = dict(
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
        layout=layout,
    )

    def init(key, input_shape):
        c = _input_channels(label, input_shape, layout)
        _check_groups(label, c, out_channels, groups)
        wshape = (c, out_channels // groups, kh, kw)
        fan_in = (c // groups) * -(-kh // sh) * -(-kw // sw)
        params = {"w": w_init(key, wshape, fan_in, dtype)}
        if use_bias:
            params["b"] = jnp.zeros((out_channels,), dtype)
        out = _predict(
            lambda x, w: ops.conv_transpose2d(x, w, **kwargs),
            input_shape,
            wshape,
            dtype,
        )
        return out, params, {}

    def apply(params, state, x, *, grad="custom", **_):
        y = ops.conv_transpose2d(
            x,
            params["w"],
            params.get("b"),
            grad=rules.pick(grad, layer=label),
            **kwargs,
        )
        return y, state

    return leaf(label, "convtranspose", init, apply, param_keys=("w",), info=info)

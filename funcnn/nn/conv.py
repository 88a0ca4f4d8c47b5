"""Convolution layers."""

from __future__ import annotations

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
) -> Layer:
    """Convolution layer over `(N, C_in, H, W)` -> `(N, C_out, OH, OW)`.

    Params: `{"w": (C_out, C_in // groups, KH, KW), "b": (C_out,)}` (no "b" without
    bias). Arguments as in `funcnn.ops.conv2d`; `w_init(key, shape, fan_in, dtype)`
    draws the filters (He normal by default).
    """
    label = "Conv2D"
    positive_int(label, "out_channels", out_channels)
    positive_int(label, "groups", groups)
    kh, kw = _args.pair(label, "window", window)
    info = LayerInfo("conv2d", w_init)

    def init(key, input_shape):
        n, c, h, w = check_shape(label, input_shape, 4, "(N, C_in, H, W)")
        if c < 1:
            raise ValueError(
                f"{label}: expected at least one input channel, got input shape "
                f"{input_shape}."
            )
        if c % groups or out_channels % groups:
            raise ValueError(
                f"{label}: expected groups (={groups}) to divide C_in (={c}) and "
                f"out_channels (={out_channels})."
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
            grad=rules.layer_rule(grad, layer=label, info=info, w=params["w"]),
        )
        return y, state

    return leaf(label, "conv", init, apply, param_keys=("w",), info=info)

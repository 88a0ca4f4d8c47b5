"""Upsample2D: nearest and bilinear resizing, as PyTorch's nn.Upsample."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from funcnn import ops
from funcnn.nn.core import Layer, check_shape, leaf
from funcnn.ops import _args
from funcnn.ops.upsample import check_options


def Upsample2D(
    *,
    size: int | tuple[int, int] | None = None,
    scale_factor: float | tuple[float, float] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    layout: str = "NCHW",
) -> Layer:
    """Resizing layer `(N, C, H, W)` -> `(N, C, OH, OW)` (or NHWC); see
    `ops.upsample2d`. Give `size` or `scale_factor`. Its gradient is jax.grad of
    the resize under every `grad=` rule (it has no weights to treat otherwise).
    """
    label = "Upsample2D"
    _args.check_layout(label, layout)
    kwargs: dict[str, Any] = dict(
        size=size,
        scale_factor=scale_factor,
        mode=mode,
        align_corners=align_corners,
        layout=layout,
    )
    check_options(label, size, scale_factor, mode, align_corners)

    def init(key, input_shape):
        del key
        check_shape(label, input_shape, 4, _args.axes_text(layout))
        n = input_shape[0]
        out = jax.eval_shape(
            lambda x: ops.upsample2d(x, **kwargs),
            jax.ShapeDtypeStruct((max(n, 1),) + tuple(input_shape[1:]), jnp.float32),
        )
        return (n,) + out.shape[1:], {}, {}

    def apply(params, state, x, **_):
        del params
        return ops.upsample2d(x, **kwargs), state

    return leaf(label, "upsample", init, apply)

"""2-D convolution with a hand-written backward rule, next to its plain-lax reference.

The backward rule is the one from the CNN texts:
- the input delta is the output delta, dilated by the stride, correlated with the
  filters rotated by 180 degrees (a "full" convolution);
- the weight gradient is the input correlated with the output deltas;
- the bias gradient is the sum of the output deltas over batch and space.

Layers with few input taps (C_in * KH * KW <= PATCHES_MAX_TAPS, with groups=1: the
first layer of most CNNs) take a second formulation of the same rule. The forward
gathers the KH*KW shifted views of the input once ("im2col" patches) and does one
matrix product; the backward reuses the saved patches, so the weight gradient (the
input correlated with the deltas) is one more matrix product. On XLA:CPU a direct
convolution over 1-3 input channels runs far below matrix-product speed.

Both layouts run natively: `layout="NHWC"` gives XLA channels-last dimension numbers
in the forward and in both gradient convolutions, with the filters OIHW in either
layout (so parameters carry over between layouts).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from funcnn.ops import _args
from funcnn.ops._vjp import custom_vjp

# Activations in the layout, filters OIHW in both.
_DIMS = {"NCHW": ("NCHW", "OIHW", "NCHW"), "NHWC": ("NHWC", "OIHW", "NHWC")}


# Weight gradient as a convolution whose "batch" is the input channel and whose
# contracted feature is the example index: the arrays keep their layout, and the
# result comes out OIHW, with no transposes written here.
_DW_DIMS = {
    "NCHW": lax.ConvDimensionNumbers(
        lhs_spec=(1, 0, 2, 3), rhs_spec=(1, 0, 2, 3), out_spec=(1, 0, 2, 3)
    ),
    "NHWC": lax.ConvDimensionNumbers(
        lhs_spec=(3, 0, 1, 2), rhs_spec=(3, 0, 1, 2), out_spec=(1, 0, 2, 3)
    ),
}


# Largest C_in * KH * KW that takes the patches formulation (see the module doc).
PATCHES_MAX_TAPS = 32


class ConvConfig(NamedTuple):
    """Static (hashable) configuration of one conv2d call."""

    stride: _args.Pair
    pads: _args.Pads
    dilation: _args.Pair
    groups: int
    has_bias: bool
    layout: str = "NCHW"  # of x and y; filters are OIHW in both layouts


def conv2d_reference(x, w, b, cfg: ConvConfig):
    """Plain-lax forward: the autodiff path and the oracle for the custom rule.

    Shapes as in `conv2d`; `cfg` holds normalised arguments. A negative pad crops
    (conv_transpose2d's output_padding can make one).
    """
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=cfg.stride,
        padding=cfg.pads,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_DIMS[cfg.layout],
        feature_group_count=cfg.groups,
    )
    if cfg.has_bias:
        y = y + _bias(b, cfg.layout)
    return y


def _bias(b, layout: str):
    """b `(C,)` shaped to broadcast over a rank-4 array in `layout`."""
    return b[None, :, None, None] if layout == "NCHW" else b


def bias_grad(g, layout: str):
    """db `(C,)`: the deltas `g` summed over batch and space."""
    return jnp.sum(g, axis=(0, *_args.spatial_axes(layout)))


@partial(custom_vjp, nondiff_argnums=(3,))
def conv2d_custom(x, w, b, cfg):
    return conv2d_reference(x, w, b, cfg)


def _conv2d_fwd(x, w, b, cfg):
    # The input is needed for dW and the filters for dX; nothing else is saved.
    # The bias only contributes its presence (static in cfg).
    return conv2d_reference(x, w, b, cfg), (x, w)


def _conv2d_bwd(cfg, res, g):
    """g: output deltas of shape `(N, C_out, OH, OW)` (or NHWC)."""
    x, w = res
    dx = conv2d_input_grad(g, w, cfg, x.shape)
    dw = conv2d_weight_grad(x, g, cfg, w.shape)
    db = bias_grad(g, cfg.layout) if cfg.has_bias else None
    return dx, dw, db


def _hw(shape, layout: str) -> tuple[int, int]:
    h, w = _args.spatial_axes(layout)
    return shape[h], shape[w]


def _remainders(in_hw, out_hw, cfg: ConvConfig, eff):
    """Rows/cols of padded input past the last window, per axis (< stride for
    conv2d's own configs; conv_transpose2d's output_padding may add more)."""
    return tuple(
        in_hw[i] + sum(cfg.pads[i]) - eff[i] - (out_hw[i] - 1) * cfg.stride[i]
        for i in range(2)
    )


def _pad_spatial(x, layout: str, per_axis):
    """lax.pad of the spatial axes by `per_axis` (lo, hi, interior) triples."""
    config = _args.spatial_config(layout, per_axis, (0, 0, 0))
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def conv2d_input_grad(g, w, cfg: ConvConfig, x_shape):
    """dX: the stride-dilated deltas `g` `(N, C_out, OH, OW)` fully correlated with
    the 180-degree-rotated filters `w` `(C_out, C_in // G, KH, KW)`.

    Returns dX of shape `x_shape` = `(N, C_in, H, W)`. With cfg.layout "NHWC", g is
    `(N, OH, OW, C_out)` and x_shape `(N, H, W, C_in)`; w is OIHW either way.
    """
    G = cfg.groups
    c_out, c_in_g, kh, kw = w.shape
    eff = _args.effective_window((kh, kw), cfg.dilation)
    g_hw = _hw(g.shape, cfg.layout)
    rem = _remainders(_hw(x_shape, cfg.layout), g_hw, cfg, eff)
    # Swap in/out channels within each group and rotate by 180 degrees.
    wt = w.reshape(G, c_out // G, c_in_g, kh, kw).transpose(0, 2, 1, 3, 4)
    wt = wt.reshape(G * c_in_g, c_out // G, kh, kw)[:, :, ::-1, ::-1]
    pads = tuple(
        (eff[i] - 1 - cfg.pads[i][0], eff[i] - 1 - cfg.pads[i][1] + rem[i])
        for i in range(2)
    )
    lhs_dilation = cfg.stride
    tiny = cfg.stride != (1, 1) and (
        g_hw[0] * g_hw[1] < kh * kw or g_hw[0] < kh or g_hw[1] < kw
    )
    layout = cfg.layout
    if tiny or min(min(p) for p in pads) < 0:
        # Dilate and pad g explicitly when padding is wider than the filter
        # (negative conv padding) or when the deltas are smaller than the filter:
        # XLA:CPU then swaps the conv operands and aborts on the base dilation
        # (the case where jax.grad of lax.conv_general_dilated crashes). In NHWC
        # it folds the explicit pad back into the conv and aborts all the same,
        # so these small convolutions run channels-first.
        if layout == "NHWC":
            g, layout = jnp.transpose(g, (0, 3, 1, 2)), "NCHW"
        g = _pad_spatial(
            g, layout, [(p[0], p[1], s - 1) for p, s in zip(pads, cfg.stride)]
        )
        pads, lhs_dilation = ((0, 0), (0, 0)), (1, 1)
    dx = lax.conv_general_dilated(
        g,
        wt,
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=lhs_dilation,
        rhs_dilation=cfg.dilation,
        dimension_numbers=_DIMS[layout],
        feature_group_count=G,
    )
    return dx if layout == cfg.layout else jnp.transpose(dx, (0, 2, 3, 1))


def conv2d_weight_grad(x, g, cfg: ConvConfig, w_shape):
    """dW: the input `x` `(N, C_in, H, W)` correlated with the deltas `g`
    `(N, C_out, OH, OW)`; the deltas act as a filter dilated by the stride.

    Returns dW of shape `w_shape` = `(C_out, C_in // G, KH, KW)`, OIHW in both
    layouts (with cfg.layout "NHWC", x and g are channels-last).
    """
    eff = _args.effective_window(w_shape[2:], cfg.dilation)
    rem = _remainders(_hw(x.shape, cfg.layout), _hw(g.shape, cfg.layout), cfg, eff)
    # Drop the rows/cols that no window reached, so the result is exactly KH x KW.
    pads = tuple((cfg.pads[i][0], cfg.pads[i][1] - rem[i]) for i in range(2))
    if min(min(p) for p in pads) < 0:
        x = _pad_spatial(x, cfg.layout, [(p[0], p[1], 0) for p in pads])
        pads = ((0, 0), (0, 0))
    return lax.conv_general_dilated(
        x,
        g,
        window_strides=cfg.dilation,
        padding=pads,
        rhs_dilation=cfg.stride,
        dimension_numbers=_DW_DIMS[cfg.layout],
        batch_group_count=cfg.groups,
    )


conv2d_custom.defvjp(_conv2d_fwd, _conv2d_bwd)


class PatchGeometry(NamedTuple):
    """Static shapes of one patches-formulation call: the config, the shapes of
    x `(N, C_in, H, W)` (or NHWC, as conv.layout says) and w `(C_out, C_in, KH,
    KW)`, and the output's `(OH, OW)`."""

    conv: ConvConfig
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]


def conv2d_patches(x, geom: PatchGeometry):
    """im2col: the input under every filter tap, one row per output position.

    Args:
      x: input `(N, C_in, H, W)`, or `(N, H, W, C_in)` in NHWC.
    Returns:
      patches `(N * OH * OW, C_in * KH * KW)`; row `(n, oh, ow)` holds the padded
      input under the window of output `(n, :, oh, ow)`, columns ordered
      `(c, kh, kw)` like `w.reshape(C_out, -1)`.
    """
    n, c, _, _ = _args.nchw_shape(geom.x_shape, geom.conv.layout)
    _, _, kh, kw = geom.w_shape
    (sh, sw), (dh, dw) = geom.conv.stride, geom.conv.dilation
    oh, ow = geom.out_hw
    pads = ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in geom.conv.pads) + ((0, 0, 0),)
    # Channels last: each output position's window (C_in x taps) is one row.
    if geom.conv.layout == "NCHW":
        x = jnp.transpose(x, (0, 2, 3, 1))
    xp = lax.pad(x, jnp.zeros((), x.dtype), pads)
    taps = [
        lax.slice(
            xp,
            (0, i * dh, j * dw, 0),
            (n, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(taps, axis=4).reshape(n * oh * ow, c * kh * kw)


def _patches_forward(x, w, b, geom: PatchGeometry):
    patches = conv2d_patches(x, geom)
    y = patches @ w.reshape(w.shape[0], -1).T  # (N*OH*OW, C_out)
    if geom.conv.has_bias:
        y = y + b
    y = y.reshape(geom.x_shape[0], *geom.out_hw, w.shape[0])
    if geom.conv.layout == "NCHW":
        y = y.transpose(0, 3, 1, 2)
    return y, patches


@partial(custom_vjp, nondiff_argnums=(3,))
def conv2d_patches_custom(x, w, b, geom):
    return _patches_forward(x, w, b, geom)[0]


def _conv2d_patches_fwd(x, w, b, geom):
    # The patches replace x as the residual: dW needs exactly them. They are
    # KH*KW times the size of x, which is small for the layers that come here.
    y, patches = _patches_forward(x, w, b, geom)
    return y, (patches, w)


def _conv2d_patches_bwd(geom, res, g):
    """g: output deltas `(N, C_out, OH, OW)` (or NHWC)."""
    patches, w = res
    g_last = jnp.transpose(g, (0, 2, 3, 1)) if geom.conv.layout == "NCHW" else g
    g_rows = g_last.reshape(-1, w.shape[0])  # (N*OH*OW, C_out)
    # dW: the input (as patches) correlated with the deltas, as one matrix product.
    dw = (g_rows.T @ patches).reshape(w.shape)
    dx = conv2d_input_grad(g, w, geom.conv, geom.x_shape)
    db = jnp.sum(g_rows, axis=0) if geom.conv.has_bias else None
    return dx, dw, db


conv2d_patches_custom.defvjp(_conv2d_patches_fwd, _conv2d_patches_bwd)

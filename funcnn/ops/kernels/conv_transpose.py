"""Transposed 2-D convolution (PyTorch's `conv_transpose2d`), with a hand-written
backward rule built from conv2d's own pieces, next to its plain-lax reference.

A transposed convolution is the input gradient of a convolution: every input value
is spread over the output through the filter, the output cropped by the padding.
With the same filters, stride, padding, dilation and groups:

- forward: `conv_transpose2d(x, w) = conv2d_input_grad(x, w)`, the backward pass
  of the conv2d that maps the output back to the input;
- dX: the conv2d forward of the deltas, `conv2d(dY, w)`;
- dW: the deltas correlated with the input, `conv2d_weight_grad(dY, x)` (conv2d's
  weight gradient with input and deltas in each other's place);
- db: the deltas summed over batch and space.

So the transpose of a convolution is differentiated by a convolution, and no
convolution maths is written twice. The reference instead writes the definition
out: the input dilated by the stride, padded, and correlated with the flipped
filters.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from funcnn.ops import _args
from funcnn.ops._vjp import custom_vjp
from funcnn.ops.kernels.conv import (
    _DIMS,
    ConvConfig,
    _bias,
    _pad_spatial,
    bias_grad,
    conv2d_input_grad,
    conv2d_reference,
    conv2d_weight_grad,
)


class TransposeGeometry(NamedTuple):
    """Static configuration of one conv_transpose2d call.

    `conv` is the conv2d whose input gradient this op is: a conv2d over the output
    `y_shape` (in `conv.layout`), with the high padding reduced by output_padding
    (a negative pad crops), so that it has exactly the input's size as output.
    """

    conv: ConvConfig
    y_shape: tuple[int, ...]


def conv_transpose2d_reference(x, w, b, geom: TransposeGeometry):
    """Plain-lax forward, the autodiff path and the oracle: x dilated by the
    stride (zeros between its rows and columns) and padded by `eff - 1` less the
    cropping, then correlated with the flipped filters at stride 1.

    Shapes as in `conv_transpose2d`. The dilation is written out with lax.pad
    rather than as a conv's lhs_dilation, so neither this forward nor its autodiff
    gradients have a strided or base-dilated convolution (XLA:CPU aborts on some
    of those; see conv2d_input_grad).
    """
    cfg = geom.conv
    c_in, c_out_g, kh, kw = w.shape
    G = cfg.groups
    eff = _args.effective_window((kh, kw), cfg.dilation)
    # (C_in, C_out/G) -> (C_out, C_in/G) within each group, rotated 180 degrees.
    wt = w.reshape(G, c_in // G, c_out_g, kh, kw).transpose(0, 2, 1, 3, 4)
    wt = wt.reshape(G * c_out_g, c_in // G, kh, kw)[:, :, ::-1, ::-1]
    layout = cfg.layout
    h, wd = (x.shape[a] for a in _args.spatial_axes(layout))
    if layout == "NHWC" and (h < kh or wd < kw or h * wd < kh * kw):
        # XLA:CPU folds the pad into an NHWC conv, swaps the operands of one this
        # small and aborts; channels-first it does not (see conv2d_input_grad).
        x, layout = jnp.transpose(x, (0, 3, 1, 2)), "NCHW"
    xd = _pad_spatial(
        x,
        layout,
        [
            (e - 1 - lo, e - 1 - hi, s - 1)
            for e, (lo, hi), s in zip(eff, cfg.pads, cfg.stride)
        ],
    )
    y = lax.conv_general_dilated(
        xd,
        wt,
        window_strides=(1, 1),
        padding=((0, 0), (0, 0)),
        rhs_dilation=cfg.dilation,
        dimension_numbers=_DIMS[layout],
        feature_group_count=G,
    )
    if layout != cfg.layout:
        y = jnp.transpose(y, (0, 2, 3, 1))
    if cfg.has_bias:
        y = y + _bias(b, cfg.layout)
    return y


@partial(custom_vjp, nondiff_argnums=(3,))
def conv_transpose_custom(x, w, b, geom):
    return _conv_transpose_forward(x, w, b, geom)


def _conv_transpose_forward(x, w, b, geom: TransposeGeometry):
    y = conv2d_input_grad(x, w, geom.conv, geom.y_shape)
    if geom.conv.has_bias:
        y = y + _bias(b, geom.conv.layout)
    return y


def _conv_transpose_fwd(x, w, b, geom):
    # dX needs the filters and dW the input; the bias only its presence (static).
    return _conv_transpose_forward(x, w, b, geom), (x, w)


def _conv_transpose_bwd(geom, res, g):
    """g: output deltas `(N, C_out, OH, OW)` (or NHWC) -> (dx, dw, db)."""
    x, w = res
    cfg = geom.conv
    dx = conv2d_reference(g, w, None, cfg._replace(has_bias=False))
    dw = conv2d_weight_grad(g, x, cfg, w.shape)
    db = bias_grad(g, cfg.layout) if cfg.has_bias else None
    return dx, dw, db


conv_transpose_custom.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)

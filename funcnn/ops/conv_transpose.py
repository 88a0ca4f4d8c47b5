"""conv_transpose2d: the public op. It checks its arguments and sizes the output,
then runs the hand-written rule (`funcnn.ops.kernels.conv_transpose`) or the
plain-lax reference (grad="autodiff").
"""

from __future__ import annotations

from funcnn.ops import _args
from funcnn.ops.kernels.conv import ConvConfig
from funcnn.ops.kernels.conv_transpose import (
    TransposeGeometry,
    conv_transpose2d_reference,
    conv_transpose_custom,
)
from funcnn.ops.registry import check_grad_mode


def conv_transpose2d(
    x,
    w,
    b=None,
    *,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    layout="NCHW",
    grad="custom",
):
    """Transposed 2-D convolution, exactly as `torch.nn.functional.conv_transpose2d`.

    Each input value `x[n, c, i, j]` adds `x[n, c, i, j] * w[c, :, kh, kw]` to the
    output at row `i*SH + kh*DH - top`, column `j*SW + kw*DW - left` (rows and
    columns outside the output are dropped). It is the input gradient of
    `conv2d(y, w, stride, padding, dilation, groups)`, which it undoes in shape.

    Backward rule (grad="custom"): dX is the conv2d forward of the deltas,
    `conv2d(dY, w)`; dW is the deltas correlated with the input, conv2d's weight
    gradient with input and deltas swapped; db is the deltas summed.

    Args:
      x: input of shape `(N, C_in, H, W)`, or `(N, H, W, C_in)` with layout="NHWC".
      w: filters of shape `(C_in, C_out // groups, KH, KW)` (PyTorch's layout, in
        both activation layouts).
      b: bias of shape `(C_out,)`, or None.
      stride: int or pair `(SH, SW)`.
      padding: int, pair `(PH, PW)` or pair of pairs `((top, bottom), (left,
        right))`: rows/columns cropped from each side of the full output.
      output_padding: int or pair: rows/columns added at the bottom/right, to pick
        among the output sizes a strided conv2d maps to one input size. Each must be
        smaller than the stride or the dilation on its axis.
      groups: number of channel groups; must divide C_in (C_out is
        `w.shape[1] * groups`).
      dilation: int or pair `(DH, DW)`: spacing between filter taps.
      layout: "NCHW" or "NHWC", of x and the output.
      grad: "custom" for the hand-written rule, "autodiff" for jax.grad of the
        plain-lax reference.

    Returns:
      Output of shape `(N, C_out, OH, OW)` (or `(N, OH, OW, C_out)`) with
      `OH = (H - 1)*SH - top - bottom + DH*(KH - 1) + output_padding_h + 1`,
      likewise OW.

    Raises:
      ValueError, TypeError: on bad shapes, dtypes or arguments, before tracing.
    """
    op = "conv_transpose2d"
    grad = check_grad_mode(op, grad)
    layout = _args.check_layout(op, layout)
    xs = _args.check_rank4(op, "x", x, _args.axes_text(layout, "C_in"))
    ws = _args.check_rank4(op, "w", w, "(C_in, C_out // groups, KH, KW)")
    _args.check_float(op, "x", x)
    if w.dtype != x.dtype:
        raise TypeError(
            f"{op}: expected w with the dtype of x ({x.dtype}), got {w.dtype}. "
            f"Cast one of them, e.g. w.astype({x.dtype})."
        )
    n, c_in, h, wd = _args.nchw_shape(xs, layout)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: expected groups to be a positive int, got {groups!r}.")
    if ws[0] != c_in:
        raise ValueError(
            f"{op}: expected w.shape[0] == C_in = {c_in}, got w of shape {ws} for x "
            f"of shape {xs}. Transposed-conv filters are (C_in, C_out // groups, "
            "KH, KW), the transpose of conv2d's."
        )
    if c_in % groups:
        raise ValueError(f"{op}: expected groups (={groups}) to divide C_in (={c_in}).")
    c_out = ws[1] * groups
    _args.check_bias(op, b, x, c_out)
    stride_ = _args.pair(op, "stride", stride)
    dilation_ = _args.pair(op, "dilation", dilation)
    extra = _args.pair(op, "output_padding", output_padding, minimum=0)
    if isinstance(padding, str):
        raise TypeError(
            f"{op}: expected padding as an int, a pair (ph, pw) or a pair of pairs "
            f"((top, bottom), (left, right)), got {padding!r}. Give the rows and "
            "columns to crop from the full output."
        )
    eff = _args.effective_window((ws[2], ws[3]), dilation_)
    pads = _args.padding(op, padding, (h, wd), eff, stride_)
    out_hw = []
    for i, axis in enumerate("HW"):
        s, d, e = stride_[i], dilation_[i], extra[i]
        if e >= s and e >= d:
            raise ValueError(
                f"{op}: expected output_padding smaller than the stride ({s}) or the "
                f"dilation ({d}) along {axis}, got {output_padding!r}. Use "
                f"output_padding < {max(s, d)} along {axis}."
            )
        size = ((h, wd)[i] - 1) * s - sum(pads[i]) + eff[i] + e
        if size < 1:
            raise ValueError(
                f"{op}: expected a positive output size along {axis}, got "
                f"({(h, wd)[i]} - 1) * {s} - {pads[i][0]} - {pads[i][1]} + "
                f"{eff[i]} + {e} = {size}. Use less padding."
            )
        out_hw.append(size)
    conv_pads = (
        (pads[0][0], pads[0][1] - extra[0]),
        (pads[1][0], pads[1][1] - extra[1]),
    )
    cfg = ConvConfig(stride_, conv_pads, dilation_, groups, b is not None, layout)
    geom = TransposeGeometry(cfg, _args.layout_shape(n, c_out, out_hw, layout))
    if grad == "autodiff":
        return conv_transpose2d_reference(x, w, b, geom)
    return conv_transpose_custom(x, w, b, geom)

"""conv2d: the public op. It checks its arguments, then runs the hand-written
rule (`funcnn.ops.kernels.conv`), the plain-lax reference (grad="autodiff") or a
rule value (`funcnn.ops.ruled`).
"""

from __future__ import annotations

from funcnn.ops import _args, ruled
from funcnn.ops.kernels.conv import (
    PATCHES_MAX_TAPS,
    ConvConfig,
    PatchGeometry,
    conv2d_custom,
    conv2d_patches_custom,
    conv2d_reference,
)
from funcnn.ops.registry import check_grad_mode


def conv2d(
    x,
    w,
    b=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    layout="NCHW",
    grad="custom",
):
    """2-D cross-correlation (PyTorch's and the CNN texts' "convolution").

    Args:
      x: input of shape `(N, C_in, H, W)`, or `(N, H, W, C_in)` with
        layout="NHWC".
      w: filters of shape `(C_out, C_in // groups, KH, KW)`.
      b: bias of shape `(C_out,)`, or None.
      stride: int or pair `(SH, SW)`.
      padding: int, pair `(PH, PW)`, pair of pairs `((top, bottom), (left, right))`,
        or "SAME" (XLA's rule: output ceil(in / S), any odd extra at the end) or
        "VALID". Zero padding.
      dilation: int or pair `(DH, DW)`: spacing between filter taps.
      groups: number of channel groups; must divide C_in and C_out.
      layout: "NCHW" or "NHWC", of x and the output; w is OIHW in both.
      grad: "custom" for the hand-written backward rule, "autodiff" for jax.grad of
        the plain-lax forward, or a backward rule (a name or a value, see
        `funcnn.rules`), e.g. "feedback_alignment". Forward values agree to
        rounding: identical bits, except where the patches formulation (module
        doc) sums in another order.

    Returns:
      Output of shape `(N, C_out, OH, OW)` (`(N, OH, OW, C_out)` in NHWC) with
      `OH = floor((H + top + bottom - DH*(KH-1) - 1) / SH) + 1`, likewise OW.

    Raises:
      ValueError, TypeError: on bad shapes, dtypes or arguments, before tracing.
    """
    op = "conv2d"
    x, w, b = _args.as_jax(x), _args.as_jax(w), _args.as_jax(b)
    grad = check_grad_mode(op, grad)
    layout = _args.check_layout(op, layout)
    xs = _args.check_rank4(op, "x", x, _args.axes_text(layout, "C_in"))
    ws = _args.check_rank4(op, "w", w, "(C_out, C_in // groups, KH, KW)")
    _, c_in, h, wd = _args.nchw_shape(xs, layout)
    _args.check_float(op, "x", x)
    if w.dtype != x.dtype:
        raise TypeError(
            f"{op}: expected w with the dtype of x ({x.dtype}), got {w.dtype}. "
            f"Cast one of them, e.g. w.astype({x.dtype})."
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: expected groups to be a positive int, got {groups!r}.")
    if c_in % groups or ws[0] % groups:
        raise ValueError(
            f"{op}: expected groups (={groups}) to divide both C_in (={c_in}) and "
            f"C_out (={ws[0]})."
        )
    if ws[1] * groups != c_in:
        raise ValueError(
            f"{op}: expected w.shape[1] == C_in // groups = {c_in} // {groups} = "
            f"{c_in // groups}, got w of shape {ws} for x of shape {xs}. The input "
            "channels of x and w do not match."
        )
    _args.check_bias(op, b, x, ws[0])
    stride_ = _args.pair(op, "stride", stride)
    dilation_ = _args.pair(op, "dilation", dilation)
    eff = _args.effective_window((ws[2], ws[3]), dilation_)
    pads = _args.padding(op, padding, (h, wd), eff, stride_)
    out_hw = tuple(
        _args.out_size(op, (h, wd)[i], pads[i], eff[i], stride_[i], axis=axis)[0]
        for i, axis in enumerate("HW")
    )
    cfg = ConvConfig(stride_, pads, dilation_, groups, b is not None, layout)
    if grad == "autodiff":
        return conv2d_reference(x, w, b, cfg)
    if not isinstance(grad, str):  # a rule value (funcnn.rules)
        return ruled.conv2d(x, w, b, grad, cfg)
    if groups == 1 and ws[1] * ws[2] * ws[3] <= PATCHES_MAX_TAPS:
        geom = PatchGeometry(
            cfg, _args.four(xs), _args.four(ws), (out_hw[0], out_hw[1])
        )
        return conv2d_patches_custom(x, w, b, geom)
    return conv2d_custom(x, w, b, cfg)

"""dense: the public op. It checks its arguments, then runs the hand-written rule
(`funcnn.ops.kernels.dense`), the plain-lax reference (grad="autodiff") or a rule
value (`funcnn.ops.ruled`).
"""

from __future__ import annotations

from funcnn.ops import _args, ruled
from funcnn.ops.kernels.dense import dense_custom, dense_reference
from funcnn.ops.registry import check_grad_mode


def dense(x, w, b=None, *, grad="custom"):
    """Fully connected map `y = x @ w.T + b`.

    Args:
      x: input of shape `(N, F_in)`.
      w: weights of shape `(F_out, F_in)`: row j holds the weights into output
        unit j, as in the CNN texts and PyTorch's `F.linear`.
      b: bias of shape `(F_out,)`, or None.
      grad: "custom" for the hand-written backward rule, "autodiff" for jax.grad
        of the plain-lax forward, or a backward rule (a name or a value, see
        `funcnn.rules`), e.g. "feedback_alignment".

    Returns:
      Output of shape `(N, F_out)`.

    Raises:
      ValueError, TypeError: on bad shapes, dtypes or arguments, before tracing.
    """
    op = "dense"
    grad = check_grad_mode(op, grad)
    for name, arr, axes in (("x", x, "(N, F_in)"), ("w", w, "(F_out, F_in)")):
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise TypeError(
                f"{op}: expected {name} to be an array, got {type(arr).__name__}."
            )
        if arr.ndim != 2:
            hint = (
                " Flatten it first: x.reshape(x.shape[0], -1)." if name == "x" else ""
            )
            raise ValueError(
                f"{op}: expected {name} of rank 2 {axes}, got shape "
                f"{tuple(arr.shape)}.{hint}"
            )
    _args.check_float(op, "x", x)
    if w.dtype != x.dtype:
        raise TypeError(
            f"{op}: expected w with the dtype of x ({x.dtype}), got {w.dtype}. "
            f"Cast one of them, e.g. w.astype({x.dtype})."
        )
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: expected w of shape (F_out, F_in) with F_in = x.shape[1] = "
            f"{x.shape[1]}, got w of shape {tuple(w.shape)}. Pass w as "
            "(outputs, inputs), i.e. the transpose of x @ w's layout."
        )
    _args.check_bias(op, b, x, w.shape[0], "F_out")
    if grad == "autodiff":
        return dense_reference(x, w, b)
    if not isinstance(grad, str):
        return ruled.dense(x, w, b, grad)
    return dense_custom(x, w, b, b is not None)

"""Argument normalisation and validation shared by the ops.

Every check here runs in Python on static shapes, before anything is traced, so a
bad call fails with a message that names the op, what it expected and what it got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("NCHW", "NHWC")

Pair = tuple[int, int]
Pads = tuple[tuple[int, int], tuple[int, int]]
# What `padding=` accepts: an int, a pair, a pair of pairs, or "SAME" / "VALID".
PaddingSpec = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] | str


def check_layout(op: str, layout: Any) -> str:
    """ "NCHW" (channels first) or "NHWC" (channels last); anything else raises."""
    if layout not in LAYOUTS:
        raise ValueError(
            f"{op}: expected layout to be one of {LAYOUTS}, got {layout!r}. "
            'Use "NCHW" for (N, C, H, W) arrays or "NHWC" for (N, H, W, C).'
        )
    return layout


def spatial_axes(layout: str) -> Pair:
    """The (H, W) axes of a rank-4 array in `layout`."""
    return (2, 3) if layout == "NCHW" else (1, 2)


def channel_axis(layout: str) -> int:
    return 1 if layout == "NCHW" else 3


def axes_text(layout: str, channels: str = "C") -> str:
    """The axes of a rank-4 array in words, e.g. "(N, H, W, C_in)"."""
    if layout == "NCHW":
        return f"(N, {channels}, H, W)"
    return f"(N, H, W, {channels})"


def four(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A rank-4 shape (already checked) as a 4-tuple of ints."""
    return int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3])


def nchw_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int, int, int]:
    """A rank-4 shape in `layout` as (N, C, H, W)."""
    if layout == "NCHW":
        return shape[0], shape[1], shape[2], shape[3]
    return shape[0], shape[3], shape[1], shape[2]


def layout_shape(n: int, c: int, hw: Sequence[int], layout: str) -> tuple[int, ...]:
    """The inverse of `nchw_shape`: (N, C, H, W) sizes as a shape in `layout`."""
    return (n, c, *hw) if layout == "NCHW" else (n, *hw, c)


def spatial_config(layout: str, per_axis: Sequence[Any], fill: Any) -> tuple:
    """A rank-4 per-axis config (for lax.pad, slices, windows) with `per_axis[i]`
    at the i-th spatial axis of `layout` and `fill` at the batch and channel axes."""
    out = [fill] * 4
    for axis, value in zip(spatial_axes(layout), per_axis):
        out[axis] = value
    return tuple(out)


def pair(op: str, name: str, value: Any, *, minimum: int = 1) -> Pair:
    """Normalise an int or a pair of ints to a pair, checking each is >= minimum."""
    if isinstance(value, bool):
        raise TypeError(
            f"{op}: expected {name} to be an int or a pair of ints, got {value!r}."
        )
    if isinstance(value, int):
        out = (value, value)
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(
            f"{op}: expected {name} to be an int or a pair of ints, got {value!r}."
        )
    if min(out) < minimum:
        raise ValueError(
            f"{op}: expected {name} >= {minimum}, got {value!r}. "
            f"Every {name} must be a positive integer."
        )
    return out


def effective_window(window: Pair, dilation: Pair) -> Pair:
    """Effective extent D*(F-1)+1 of a dilated window, per spatial axis."""
    return (
        dilation[0] * (window[0] - 1) + 1,
        dilation[1] * (window[1] - 1) + 1,
    )


def same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    """XLA's "SAME" padding for one axis: output ceil(size/stride), odd extra last."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def padding(op: str, value: Any, spatial: Pair, eff_window: Pair, stride: Pair) -> Pads:
    """Normalise `padding` to ((top, bottom), (left, right)).

    Accepts an int, a pair (ph, pw), a pair of pairs, or "SAME" / "VALID".
    """
    if isinstance(value, str):
        mode = value.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            return (
                same_pads(spatial[0], eff_window[0], stride[0]),
                same_pads(spatial[1], eff_window[1], stride[1]),
            )
        raise ValueError(
            f'{op}: expected padding "SAME" or "VALID" when given as a string, '
            f"got {value!r}."
        )
    msg = (
        f"{op}: expected padding as an int, a pair (ph, pw), a pair of pairs "
        f'((top, bottom), (left, right)) or "SAME"/"VALID", got {value!r}.'
    )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        pads = ((value, value), (value, value))
    elif isinstance(value, Sequence) and len(value) == 2:
        if all(is_int(v) for v in value):
            pads = ((value[0], value[0]), (value[1], value[1]))
        elif all(
            isinstance(v, Sequence) and len(v) == 2 and all(is_int(u) for u in v)
            for v in value
        ):
            pads = ((value[0][0], value[0][1]), (value[1][0], value[1][1]))
        else:
            raise TypeError(msg)
    else:
        raise TypeError(msg)
    if min(min(p) for p in pads) < 0:
        raise ValueError(
            f"{op}: expected non-negative padding, got {value!r}. "
            "Crop the input instead of padding it negatively."
        )
    return (
        (int(pads[0][0]), int(pads[0][1])),
        (int(pads[1][0]), int(pads[1][1])),
    )


def as_jax(x: Any) -> Any:
    """A numpy array as a jax array; anything else as it is.

    A jitted op sees its numpy arguments as jax arrays, with jax's dtype rules
    (float64 becomes float32 while x64 is off). Converting first gives an eager
    call the very same dtypes, so eager and jitted calls accept the same inputs.
    """
    return jnp.asarray(x) if isinstance(x, np.ndarray) else x


def check_rank4(op: str, name: str, x: Any, axes: str) -> tuple[int, ...]:
    shape = tuple(getattr(x, "shape", ()))
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(
            f"{op}: expected {name} to be an array, got {type(x).__name__}."
        )
    if len(shape) != 4:
        hint = " Add batch and channel axes: x[None, None]." if len(shape) == 2 else ""
        hint = " Add a batch axis: x[None]." if len(shape) == 3 else hint
        raise ValueError(
            f"{op}: expected {name} of rank 4 {axes}, got shape {shape}.{hint}"
        )
    return shape


def check_float(op: str, name: str, x: Any) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{op}: expected {name} with a floating dtype (float32, float64, "
            f"bfloat16, float16), got {x.dtype}. Cast it, e.g. x.astype(jnp.float32)."
        )


def check_bias(op: str, b: Any, x: Any, size: int, axis: str = "C_out") -> None:
    """Refuses a bias not of shape `(size,)` or not of x's dtype; None passes."""
    if b is None:
        return
    if tuple(getattr(b, "shape", ())) != (size,):
        raise ValueError(
            f"{op}: expected b of shape ({axis},) = ({size},), "
            f"got {getattr(b, 'shape', type(b).__name__)}."
        )
    if b.dtype != x.dtype:
        raise TypeError(
            f"{op}: expected b with the dtype of x ({x.dtype}), got {b.dtype}."
        )


def out_size(
    op: str,
    size: int,
    pads: tuple[int, int],
    eff: int,
    stride: int,
    ceil_mode: bool = False,
    axis: str = "H",
) -> tuple[int, int]:
    """Output length and extra high-side padding needed by ceil_mode.

    floor((in + lo + hi - eff) / S) + 1, or with ceil_mode the PyTorch rule: round up,
    then drop the last window if it would start past the input and the low padding.
    """
    lo, hi = pads
    span = size + lo + hi - eff
    if span < 0:
        raise ValueError(
            f"{op}: expected the effective window ({eff}) to fit in the padded input "
            f"along {axis} ({size} + {lo} + {hi} = {size + lo + hi}), got an empty "
            "output. Use a smaller window or dilation, or more padding."
        )
    if not ceil_mode:
        return span // stride + 1, 0
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + lo:
        out -= 1
    extra = max((out - 1) * stride + eff - (size + lo + hi), 0)
    return out, extra

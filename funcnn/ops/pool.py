"""Max and mean pooling with hand-written backward rules, next to plain-lax references.

- Max pooling's backward sends each delta to the position that won the forward pass
  (the first maximum in row-major window order, as PyTorch does on ties).
- Mean pooling's backward spreads each delta evenly over its window.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.ops import _args
from funcnn.ops._windows import WindowConfig, pad_input, place_taps, tap_slice


def _window_config(op, x, window, stride, padding, dilation, ceil_mode):
    shape = _args.check_rank4(op, "x", x, "(N, C, H, W)")
    _args.check_float(op, "x", x)
    window_ = _args.pair(op, "window", window)
    stride_ = window_ if stride is None else _args.pair(op, "stride", stride)
    dilation_ = _args.pair(op, "dilation", dilation)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: expected ceil_mode to be a bool, got {ceil_mode!r}.")
    eff = _args.effective_window(window_, dilation_)
    pads = _args.padding(op, padding, shape[2:], eff, stride_)
    for i, axis in enumerate("HW"):
        if max(pads[i]) > eff[i] // 2:
            raise ValueError(
                f"{op}: expected padding along {axis} at most half the effective "
                f"window ({eff[i]} // 2 = {eff[i] // 2}), got {pads[i]}. A window "
                "that can lie wholly in the padding has no input to pool."
            )
    out, extra = zip(
        *(
            _args.out_size(
                op, shape[2 + i], pads[i], eff[i], stride_[i], ceil_mode, axis="HW"[i]
            )
            for i in range(2)
        )
    )
    full_pads = tuple((lo, hi + e) for (lo, hi), e in zip(pads, extra))
    return WindowConfig(
        tuple(shape[2:]), window_, stride_, dilation_, full_pads, tuple(out)
    ), pads


def _index_dtype(cfg: WindowConfig):
    """Smallest signed integer dtype that holds a tap index 0..KH*KW-1."""
    taps = cfg.window[0] * cfg.window[1]
    return jnp.int8 if taps <= 127 else jnp.int16 if taps <= 32767 else jnp.int32


# --------------------------------------------------------------------------- max


def max_pool2d(
    x, window, *, stride=None, padding=0, dilation=1, ceil_mode=False, grad="custom"
):
    """2-D max pooling.

    Args:
      x: input of shape `(N, C, H, W)`.
      window: int or pair `(KH, KW)`.
      stride: int or pair; None means stride = window.
      padding: int, pair, pair of pairs `((top, bottom), (left, right))`, "SAME" or
        "VALID". Padding is -inf, and each side is at most half the effective window.
        Asymmetric padding and "SAME" go beyond what PyTorch accepts.
      dilation: int or pair: spacing between window taps.
      ceil_mode: round the output size up, as PyTorch does (a last window that would
        start in the high padding is dropped).
      grad: "custom" (hand-written rule), "autodiff" (jax.grad of the plain-lax
        forward) or a backward rule (`funcnn.rules`); feedback alignment and sign
        symmetry keep the exact rule here. JAX cannot differentiate a dilated max
        window, so for dilation > 1 the autodiff forward is built from stacked taps
        and a first-argmax gather.

    Returns:
      Output of shape `(N, C, OH, OW)`,
      `OH = floor((H + top + bottom - DH*(KH-1) - 1) / SH) + 1` (ceil with ceil_mode).
    """
    op = "max_pool2d"
    x = _args.as_jax(x)
    grad = _args.check_grad_mode(op, grad)
    cfg, _ = _window_config(op, x, window, stride, padding, dilation, ceil_mode)
    if not isinstance(grad, str):  # a rule value that reroutes the deltas
        from funcnn.ops import _ruled  # _ruled imports this module

        return _ruled.max_pool2d(x, grad, cfg)
    if grad == "custom":
        return _max_pool_custom(x, cfg)
    return max_pool2d_reference(x, cfg)


def max_pool2d_reference(x, cfg: WindowConfig):
    """Plain-lax forward, `(N, C, H, W)` -> `(N, C, OH, OW)`: the autodiff oracle."""
    if cfg.dilation == (1, 1):
        # The init value must be a concrete numpy scalar: under jit, jnp.asarray
        # gives a tracer, and lax.reduce_window then falls back to its generic
        # (non-differentiable) form instead of reduce_window_max.
        return lax.reduce_window(
            pad_input(x, cfg, -jnp.inf),
            np.asarray(-np.inf, x.dtype),
            lax.max,
            (1, 1) + cfg.window,
            (1, 1) + cfg.stride,
            "VALID",
        )
    # JAX has no VJP for a dilated reduce_window max; gathering the first maximum
    # from the stacked taps gives the same values and a gradient JAX can derive.
    xp = pad_input(x, cfg, -jnp.inf)
    taps = jnp.stack([tap_slice(xp, cfg, kh, kw) for kh, kw in cfg.taps], axis=-1)
    first = jnp.argmax(taps, axis=-1)[..., None]
    return jnp.take_along_axis(taps, first, axis=-1)[..., 0]


def _max_pool_argmax(x, cfg: WindowConfig):
    """Max and winning tap index (first maximum, row-major), both `(N, C, OH, OW)`."""
    xp = pad_input(x, cfg, -jnp.inf)
    best, index = None, None
    for k, (kh, kw) in enumerate(cfg.taps):
        val = tap_slice(xp, cfg, kh, kw)
        if best is None:
            best, index = val, jnp.zeros(val.shape, _index_dtype(cfg))
            continue
        # Strictly greater keeps the first maximum on ties; a NaN wins, as in
        # PyTorch, so NaNs propagate forward and their delta goes to the NaN.
        wins = (val > best) | (val != val)
        best = jnp.where(wins, val, best)
        index = jnp.where(wins, jnp.asarray(k, index.dtype), index)
    return best, index


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_custom(x, cfg):
    return _max_pool_argmax(x, cfg)[0]


def _max_pool_fwd(x, cfg):
    # Save only the winning tap per output, as int8 for windows up to 127 taps:
    # a quarter of the output's bytes in float32, instead of a copy of x.
    y, index = _max_pool_argmax(x, cfg)
    return y, index


def _max_pool_bwd(cfg, index, g):
    """g: `(N, C, OH, OW)` deltas -> dx `(N, C, H, W)`, each at its window's winner."""
    zero = jnp.zeros((), g.dtype)
    parts = (
        ((kh, kw), jnp.where(index == k, g, zero))
        for k, (kh, kw) in enumerate(cfg.taps)
    )
    return (place_taps(parts, cfg),)


_max_pool_custom.defvjp(_max_pool_fwd, _max_pool_bwd)


# -------------------------------------------------------------------------- mean


def avg_pool2d(
    x,
    window,
    *,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    grad="custom",
):
    """2-D mean pooling.

    Args:
      x: input of shape `(N, C, H, W)`.
      window: int or pair `(KH, KW)`.
      stride: int or pair; None means stride = window.
      padding: int, pair, pair of pairs `((top, bottom), (left, right))`, "SAME" or
        "VALID". Zero padding, each side at most half the window. Asymmetric padding
        and "SAME" go beyond what PyTorch accepts.
      ceil_mode: round the output size up, as PyTorch does.
      count_include_pad: divide by the window's size including explicit padding
        (but never the extra rows ceil_mode adds), else by the number of input
        positions in the window. Applies to "SAME" padding too.
      grad: "custom" (hand-written rule), "autodiff" (jax.grad of the plain-lax
        forward) or a backward rule (`funcnn.rules`); feedback alignment and sign
        symmetry keep the exact rule here.

    Returns:
      Output of shape `(N, C, OH, OW)`,
      `OH = floor((H + top + bottom - KH) / SH) + 1` (ceil with ceil_mode).
    """
    op = "avg_pool2d"
    x = _args.as_jax(x)
    grad = _args.check_grad_mode(op, grad)
    if not isinstance(count_include_pad, bool):
        raise TypeError(
            f"{op}: expected count_include_pad to be a bool, got {count_include_pad!r}."
        )
    cfg, pads = _window_config(op, x, window, stride, padding, 1, ceil_mode)
    divisor = _avg_divisor(cfg, pads, count_include_pad)
    if not isinstance(grad, str):  # a rule value that reroutes the deltas
        from funcnn.ops import _ruled  # _ruled imports this module

        return _ruled.avg_pool2d(x, grad, cfg, divisor)
    if grad == "custom":
        return _avg_pool_custom(x, cfg, divisor)
    return avg_pool2d_reference(x, cfg, divisor)


class _Divisor:
    """Hashable wrapper of the static `(OH, OW)` divisor, for nondiff_argnums."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self._key = (array.shape, array.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Divisor) and self._key == other._key


def _avg_divisor(cfg: WindowConfig, pads, count_include_pad: bool) -> _Divisor:
    """Per-output window counts, `(OH, OW)`, computed in numpy at trace time."""
    counts = []
    for i in range(2):
        lo, hi = pads[i]  # explicit padding, without ceil_mode's extra
        start = np.arange(cfg.out_hw[i]) * cfg.stride[i]
        end = start + cfg.window[i]
        if count_include_pad:
            first, last = 0, lo + cfg.in_hw[i] + hi
        else:
            first, last = lo, lo + cfg.in_hw[i]
        counts.append(np.minimum(end, last) - np.maximum(start, first))
    return _Divisor(np.outer(counts[0], counts[1]))


def avg_pool2d_reference(x, cfg: WindowConfig, divisor: _Divisor):
    """Plain-lax forward, `(N, C, H, W)` -> `(N, C, OH, OW)`: the autodiff oracle."""
    sums = lax.reduce_window(
        pad_input(x, cfg, 0),
        np.asarray(0, x.dtype),  # concrete, so JAX sees reduce_window_sum
        lax.add,
        (1, 1) + cfg.window,
        (1, 1) + cfg.stride,
        "VALID",
    )
    return sums / jnp.asarray(divisor.array, x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool_custom(x, cfg, divisor):
    return avg_pool2d_reference(x, cfg, divisor)


def _avg_pool_fwd(x, cfg, divisor):
    # The backward needs only the static geometry and divisor: nothing is saved.
    return avg_pool2d_reference(x, cfg, divisor), None


def _avg_pool_bwd(cfg, divisor, res, g):
    """g: `(N, C, OH, OW)` -> dx `(N, C, H, W)`: each delta / count to every tap."""
    del res
    share = g / jnp.asarray(divisor.array, g.dtype)
    return (place_taps(((tap, share) for tap in cfg.taps), cfg),)


_avg_pool_custom.defvjp(_avg_pool_fwd, _avg_pool_bwd)

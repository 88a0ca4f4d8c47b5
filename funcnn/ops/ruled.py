"""The custom VJPs that run a rule value (`funcnn.ops.rule.Rule`) inside conv2d,
dense, max_pool2d and avg_pool2d.

A public op whose `grad=` resolved to a rule value (`funcnn.ops.registry`) calls
the function of its name here. The rule travels through the custom VJP
(`funcnn.ops.custom_vjp`) as a differentiable pytree argument whose cotangent is
zero; its methods give the forward, the input delta and the parameter gradients,
each checked against the primal's shape and dtype. Forward mode differentiates
the rule's forward method with JAX's own rules.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.ops import _args
from funcnn.ops._vjp import custom_vjp
from funcnn.ops._windows import WindowConfig
from funcnn.ops.kernels.avg_pool import avg_pool2d_reference
from funcnn.ops.rule import Rule, Window


def _zero_cotangent(rule: Rule):
    def zero(a):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return jnp.zeros_like(a)
        return np.zeros(a.shape, jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, rule)


def _checked(rule: Rule, method: str, value, like):
    """A rule method's result, after checking it has the primal's shape/dtype."""
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ValueError(
            f"{type(rule).__name__}.{method}: expected an array of shape "
            f"{like.shape} and dtype {like.dtype}, got shape {value.shape} and "
            f"dtype {value.dtype}."
        )
    return value


def conv2d(x, w, b, rule: Rule, cfg):
    """conv2d under `rule`; arguments as `conv2d_reference` takes them."""
    return _conv2d_ruled(x, w, b, rule.prepare("conv2d", w), cfg)


@partial(custom_vjp, nondiff_argnums=(4,))
def _conv2d_ruled(x, w, b, rule, cfg):
    return rule.conv2d_forward(x, w, b, cfg)


def _conv2d_ruled_fwd(x, w, b, rule, cfg):
    # x for dW, w for dX (a rule may derive its B from it, as sign symmetry
    # does), the rule for its arrays. The bias only contributes its presence.
    return rule.conv2d_forward(x, w, b, cfg), (x, w, rule)


def _conv2d_ruled_bwd(cfg, res, g):
    """g: output deltas `(N, C_out, OH, OW)`."""
    x, w, rule = res
    dx = _checked(
        rule, "conv2d_input_grad", rule.conv2d_input_grad(g, w, cfg, x.shape), x
    )
    dw = _checked(
        rule, "conv2d_weight_grad", rule.conv2d_weight_grad(x, g, cfg, w.shape), w
    )
    c = _args.channel_axis(cfg.layout)
    db = jnp.sum(g, axis=tuple(a for a in range(4) if a != c)) if cfg.has_bias else None
    return dx, dw, db, _zero_cotangent(rule)


_conv2d_ruled.defvjp(_conv2d_ruled_fwd, _conv2d_ruled_bwd)


def dense(x, w, b, rule: Rule):
    """dense under `rule`: x `(N, F_in)`, w `(F_out, F_in)`, b `(F_out,)` or None."""
    return _dense_ruled(x, w, b, rule.prepare("dense", w), b is not None)


@partial(custom_vjp, nondiff_argnums=(4,))
def _dense_ruled(x, w, b, rule, has_bias):
    return rule.dense_forward(x, w, b)


def _dense_ruled_fwd(x, w, b, rule, has_bias):
    # As for conv2d: x for dW, w for dX (or the rule's B), the rule's arrays.
    return rule.dense_forward(x, w, b), (x, w, rule)


def _dense_ruled_bwd(has_bias, res, g):
    """g: output deltas `(N, F_out)`."""
    x, w, rule = res
    dx = _checked(rule, "dense_input_grad", rule.dense_input_grad(g, w), x)
    dw = _checked(rule, "dense_weight_grad", rule.dense_weight_grad(x, g), w)
    db = jnp.sum(g, axis=0) if has_bias else None
    return dx, dw, db, _zero_cotangent(rule)


_dense_ruled.defvjp(_dense_ruled_fwd, _dense_ruled_bwd)


def max_pool2d(x, rule: Rule, cfg: WindowConfig):
    """max_pool2d under `rule`: x `(N, C, H, W)` -> `(N, C, OH, OW)`."""
    return _max_pool_ruled(x, rule.prepare("max_pool2d", None), Window(cfg))


@partial(custom_vjp, nondiff_argnums=(2,))
def _max_pool_ruled(x, rule, win):
    return rule.max_pool2d_forward(x, win)


def _max_pool_ruled_fwd(x, rule, win):
    # A rule may route by anything in the window, so x and y are saved (the exact
    # rule saves only an int8 index; this path runs only for a rule value).
    y = rule.max_pool2d_forward(x, win)
    return y, (x, y, rule)


def _max_pool_ruled_bwd(win, res, g):
    x, y, rule = res
    dx = _checked(
        rule, "max_pool2d_input_grad", rule.max_pool2d_input_grad(x, y, g, win), x
    )
    return dx, _zero_cotangent(rule)


_max_pool_ruled.defvjp(_max_pool_ruled_fwd, _max_pool_ruled_bwd)


def avg_pool2d(x, rule: Rule, cfg: WindowConfig, divisor):
    """avg_pool2d under `rule`: x `(N, C, H, W)` -> `(N, C, OH, OW)`."""
    return _avg_pool_ruled(x, rule.prepare("avg_pool2d", None), Window(cfg, divisor))


@partial(custom_vjp, nondiff_argnums=(2,))
def _avg_pool_ruled(x, rule, win):
    return avg_pool2d_reference(x, win.cfg, win.divisor)


def _avg_pool_ruled_fwd(x, rule, win):
    # Nothing of x is saved: the geometry (static) and the rule are enough.
    return avg_pool2d_reference(x, win.cfg, win.divisor), rule


def _avg_pool_ruled_bwd(win, rule, g):
    dx = rule.avg_pool2d_input_grad(g, win)
    n, c, _, _ = _args.nchw_shape(g.shape, win.cfg.layout)
    shape = _args.layout_shape(n, c, win.cfg.in_hw, win.cfg.layout)
    like = jax.ShapeDtypeStruct(shape, g.dtype)
    return _checked(rule, "avg_pool2d_input_grad", dx, like), _zero_cotangent(rule)


_avg_pool_ruled.defvjp(_avg_pool_ruled_fwd, _avg_pool_ruled_bwd)

"""Rule names and the custom VJPs that run a rule value inside conv2d, dense,
max_pool2d and avg_pool2d (the protocol itself is `funcnn.ops._rule.Rule`).

This module sits in `funcnn.ops` because the ops dispatch to it; `funcnn.rules`
re-exports the public names and adds the built-in research rules. An op wrapper's
one call `grad = _args.check_grad_mode(op, grad)` resolves `grad` here: "custom"
and "autodiff" stay names, any other name is looked up, and a rule value is asked
`rule.for_op(op)`, which is the rule itself (run by the VJPs below), "custom" (the
op keeps its exact hand-written rule) or an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.ops import _args
from funcnn.ops._rule import Rule, Window, _flatten
from funcnn.ops._windows import WindowConfig
from funcnn.ops.avg_pool import avg_pool2d_reference

BUILTIN = ("custom", "autodiff")
_REGISTRY: dict[str, Rule] = {}
_LIBRARY_NAMES: list[str] = []  # registered by funcnn itself, listed in messages


def names() -> tuple[str, ...]:
    """The names "custom", "autodiff" and those funcnn registers, in order."""
    return BUILTIN + tuple(_LIBRARY_NAMES)


def check_static(func: str, rule: Rule) -> None:
    """Raises a TypeError if a field outside `array_fields` is not hashable."""
    for name, value in _flatten(rule)[1]:
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"{func}: expected hashable config fields in {type(rule).__name__}, "
                f"got an unhashable {type(value).__name__} in field {name!r}. List "
                "array fields in the class's array_fields; make others tuples."
            ) from None


def lookup(func: str, grad: Any, where: str = "") -> Rule | str:
    """A rule name or value as "custom", "autodiff" or a `Rule` value.

    Raises:
      ValueError, TypeError: for an unknown name or anything else.
    """
    if isinstance(grad, str):
        if grad in BUILTIN:
            return grad
        if grad in _REGISTRY:
            return _REGISTRY[grad]
    elif isinstance(grad, Rule):
        check_static(func, grad)
        return grad
    hint = (
        ' Use grad="custom" for the hand-written backward rule or grad="autodiff" '
        "for jax.grad of the plain forward."
    )
    close = []
    if isinstance(grad, str):
        close = difflib.get_close_matches(grad, BUILTIN + tuple(_REGISTRY), n=1)
    if close:
        hint = f" Did you mean {close[0]!r}?"
    elif isinstance(grad, Mapping) or type(grad).__name__ == "Scoped":
        hint = (
            " A mapping from layer paths to rules applies to a model (model.apply, "
            "make_train_step); an op takes one rule."
        )
    elif isinstance(grad, type) and issubclass(grad, Rule):
        hint = f" Pass an instance: {grad.__name__}()."
    raise ValueError(
        f"{func}: expected grad{where} to be one of {names()}, a name given to "
        f"funcnn.rules.register or a funcnn.rules.Rule value, got {grad!r}.{hint}"
    )


def resolve(op: str, grad: Any) -> Rule | str:
    """What an op runs for `grad`: "custom", "autodiff" or a Rule value."""
    found = lookup(op, grad)
    return found if isinstance(found, str) else found.for_op(op)


def register(name: str, rule: Rule, *, overwrite: bool = False) -> Rule:
    """Makes `rule` usable by `name` wherever `grad=` takes a rule. Returns it.

    Raises:
      ValueError: for "custom"/"autodiff", or a name already taken by another
        rule (pass overwrite=True to replace it).
      TypeError: if `rule` is not a Rule value.
    """
    func = "rules.register"
    if not isinstance(name, str) or not name:
        raise TypeError(f"{func}: expected a non-empty str name, got {name!r}.")
    if name in BUILTIN:
        raise ValueError(
            f"{func}: expected a name other than {BUILTIN}, got {name!r}. Those "
            "two name funcnn's own exact rules."
        )
    if not isinstance(rule, Rule):
        hint = " Pass an instance, e.g. MyRule()." if isinstance(rule, type) else ""
        raise TypeError(
            f"{func}: expected a funcnn.rules.Rule value, got {rule!r}.{hint}"
        )
    check_static(func, rule)
    old = _REGISTRY.get(name)
    if old is not None and old is not rule and not overwrite:
        raise ValueError(
            f"{func}: expected a new name, got {name!r}, which already names "
            f"{old!r}. Pass overwrite=True to replace it."
        )
    _REGISTRY[name] = rule
    return rule


def register_library(name: str, rule: Rule) -> Rule:
    """`register` for the rules funcnn itself ships: they are listed in messages."""
    register(name, rule)
    if name not in _LIBRARY_NAMES:
        _LIBRARY_NAMES.append(name)
    return rule


def registered() -> dict[str, Rule]:
    """A copy of the name -> rule registry."""
    return dict(_REGISTRY)


# -------------------------------------------------------------- the ruled VJPs


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


@partial(jax.custom_vjp, nondiff_argnums=(4,))
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


@partial(jax.custom_vjp, nondiff_argnums=(4,))
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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
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

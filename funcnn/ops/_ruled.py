"""Backward rules as values: the `Rule` protocol, the registry of rule names, and
the custom VJPs that run a rule inside conv2d, dense, max_pool2d and avg_pool2d.

This module sits in `funcnn.ops` because the ops dispatch to it; `funcnn.rules`
re-exports the public names and adds the built-in research rules. An op wrapper's
one call `grad = _args.check_grad_mode(op, grad)` resolves `grad` here: "custom"
and "autodiff" stay names, any other name is looked up, and a rule value is asked
`rule.for_op(op)`, which is the rule itself (run by the VJPs below), "custom" (the
op keeps its exact hand-written rule) or an error.

A rule travels through `jax.custom_vjp` as an ordinary, differentiable argument:
it is a pytree whose children are its `array_fields` (feedback alignment's B) and
whose static part is every other field. The backward returns zeros for those
arrays, so differentiating with respect to a rule's array gives zero, which is
the truth: the forward does not read B. Only hashable configuration (ConvConfig,
the pooling geometry) goes into `nondiff_argnums`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.ops import conv as _conv
from funcnn.ops import pool as _pool
from funcnn.ops._windows import WindowConfig, pad_input, place_taps, tap_slice

# funcnn.ops.dense names the function there, so the module's helpers by name:
from funcnn.ops.dense import dense_input_grad, dense_reference, dense_weight_grad

BUILTIN = ("custom", "autodiff")
# The ops whose wrappers run a rule value through the VJPs below.
RULED_OPS = ("conv2d", "dense", "max_pool2d", "avg_pool2d")
# Ops with a weight: a rule that does not rewrite one of these cannot quietly fall
# back to the exact rule, since "the rule's backward" would then be a lie. Ops
# without a weight (pools, unpooling) keep their exact rule under any rule that
# does not rewrite them.
WEIGHTED_OPS = ("conv2d", "dense", "conv_transpose2d")

_REGISTRY: dict[str, Rule] = {}
_LIBRARY_NAMES: list[str] = []  # registered by funcnn itself, listed in messages


def _short(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}[{','.join(map(str, value.shape))}]"
    return repr(value)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Rule:
    """A backward rule: how conv2d, dense, max_pool2d and avg_pool2d compute their
    input delta and parameter gradients (and, for straight-through rules, their
    forward). Every method here is the exact rule; a rule overrides what it changes.

    Write a rule as a frozen dataclass subclass, list the ops it rewrites in `ops`,
    and override one or more methods:

    ```python
    @dataclasses.dataclass(frozen=True)
    class SignOnly(funcnn.rules.Rule):
        ops = ("dense",)

        def backward_weight(self, w):  # B = sign(W) for the input delta
            return jnp.sign(w)
    ```

    Use it by value (`grad=SignOnly()`) or by name after `rules.register`.

    Class attributes:
      ops: the ops whose backward (or forward) the rule rewrites, among
        `RULED_OPS`. Ops without a weight that are not listed keep their exact
        rule; a weighted op not listed (a conv under a dense-only rule) is an error.
      array_fields: names of the fields that hold arrays (e.g. a fixed B). They
        travel through `jax.custom_vjp` as differentiable inputs with zero
        cotangents; every other field is static configuration and must be
        hashable (numbers, strings, tuples).

    Arrays the methods see: x `(N, C_in, H, W)` or `(N, F_in)`; w `(C_out,
    C_in // G, KH, KW)` or `(F_out, F_in)`; g, the output deltas, `(N, C_out, OH,
    OW)` or `(N, F_out)`. The bias gradient is always the exact sum of the deltas.
    """

    ops: ClassVar[tuple[str, ...]] = ()
    array_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, _flatten, partial(_unflatten, cls))

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={_short(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        return f"{type(self).__name__}({fields})"

    # ---------------------------------------------------------- dispatch

    def for_op(self, op: str) -> Rule | str:
        """What `op` runs under this rule: the rule itself for ops in `ops`,
        "custom" for a weight-free op it does not rewrite.

        Raises:
          ValueError: for a weighted op the rule does not rewrite, or an `ops`
            entry no op can run.
        """
        odd = [o for o in self.ops if o not in RULED_OPS]
        if odd:
            raise ValueError(
                f"{type(self).__name__}: expected ops among {RULED_OPS}, got {odd}. "
                "Only these ops run a rule value; list only those the rule rewrites."
            )
        if op in self.ops:
            return self
        if op not in WEIGHTED_OPS:
            return "custom"
        raise ValueError(unsupported(op, self))

    def prepare(self, op: str, w, path: str = "", w_init=None) -> Rule:
        """The rule for one call of `op` with weights `w` (None for pools), at the
        layer `path` ("" at op level) whose weights `w_init(key, shape, fan_in,
        dtype)` drew (None: He normal). Runs before the custom VJP, so a rule can
        make its arrays here (feedback alignment draws B). Default: itself."""
        del op, w, path, w_init
        return self

    def backward_weight(self, w):
        """The weights the input delta flows through in place of `w` (B in the
        feedback-alignment papers). Default: `w`, the exact rule."""
        return w

    # ------------------------------------------------------------- conv2d

    def conv2d_forward(self, x, w, b, cfg):
        """The forward `(N, C_in, H, W)` -> `(N, C_out, OH, OW)`. Default: the
        plain conv (`funcnn.ops.conv2d_reference`)."""
        return _conv.conv2d_reference(x, w, b, cfg)

    def conv2d_input_grad(self, g, w, cfg, x_shape):
        """dX of shape `x_shape`. Default: the exact rule with `w` replaced by
        `self.backward_weight(w)`."""
        return _conv.conv2d_input_grad(g, self.backward_weight(w), cfg, x_shape)

    def conv2d_weight_grad(self, x, g, cfg, w_shape):
        """dW of shape `w_shape`. Default: the exact rule."""
        return _conv.conv2d_weight_grad(x, g, cfg, w_shape)

    # -------------------------------------------------------------- dense

    def dense_forward(self, x, w, b):
        """The forward `(N, F_in)` -> `(N, F_out)`. Default: `x @ w.T + b`."""
        return dense_reference(x, w, b)

    def dense_input_grad(self, g, w):
        """dX `(N, F_in)`. Default: `g @ self.backward_weight(w)`."""
        return dense_input_grad(g, self.backward_weight(w))

    def dense_weight_grad(self, x, g):
        """dW `(F_out, F_in)`. Default: the exact `g.T @ x`."""
        return dense_weight_grad(x, g)

    # -------------------------------------------------------------- pools

    def max_pool2d_forward(self, x, win: Window):
        """The forward `(N, C, H, W)` -> `(N, C, OH, OW)`. Default: the max."""
        return _pool._max_pool_argmax(x, win.cfg)[0]

    def max_pool2d_input_grad(self, x, y, g, win: Window):
        """dX `(N, C, H, W)` from the input x, the output y and the deltas g
        `(N, C, OH, OW)`. Default: each delta to its window's first maximum."""
        _, index = _pool._max_pool_argmax(x, win.cfg)
        return _pool._max_pool_bwd(win.cfg, index, g)[0]

    def avg_pool2d_input_grad(self, g, win: Window):
        """dX `(N, C, H, W)` from the deltas g `(N, C, OH, OW)`. Default: each
        delta divided by its window's count, to every tap."""
        return _pool._avg_pool_bwd(win.cfg, win.divisor, None, g)[0]


def _flatten(rule: Rule):
    arrays = type(rule).array_fields
    children = tuple(getattr(rule, name) for name in arrays)
    static = tuple(
        (f.name, getattr(rule, f.name))
        for f in dataclasses.fields(rule)
        if f.name not in arrays
    )
    return children, static


def _unflatten(cls, static, children):
    # Bypasses __init__: JAX rebuilds rules with tracers or placeholders as arrays.
    rule = object.__new__(cls)
    for name, value in static:
        object.__setattr__(rule, name, value)
    for name, value in zip(cls.array_fields, children):
        object.__setattr__(rule, name, value)
    return rule


jax.tree_util.register_pytree_node(Rule, _flatten, partial(_unflatten, Rule))


class Window(NamedTuple):
    """The geometry of one pooling call, as a pool rule's methods see it.

    `taps(x)` reads the input under each of the KH*KW window taps (row-major
    order), each of shape `(N, C, OH, OW)`; `place(parts)` is its transpose: it
    adds each part back where its tap read from, giving `(N, C, H, W)`.
    """

    cfg: WindowConfig
    divisor: Any = None  # avg pool: the static `(OH, OW)` window counts

    def taps(self, x, fill: float = -jnp.inf) -> list:
        """The padded input (padding `fill`) under every tap: KH*KW arrays."""
        xp = pad_input(x, self.cfg, fill)
        return [tap_slice(xp, self.cfg, kh, kw) for kh, kw in self.cfg.taps]

    def place(self, parts) -> Any:
        """Sum of `parts` (one `(N, C, OH, OW)` array per tap, in `taps` order)
        scattered back to `(N, C, H, W)`; what lands in padding is dropped."""
        return place_taps(zip(self.cfg.taps, parts), self.cfg)

    @property
    def counts(self) -> np.ndarray:
        """avg pool: the number each window's sum is divided by, `(OH, OW)`."""
        return self.divisor.array


# ------------------------------------------------------------- names and lookup


def names() -> tuple[str, ...]:
    """The names "custom", "autodiff" and those funcnn registers, in order."""
    return BUILTIN + tuple(_LIBRARY_NAMES)


def unsupported(op: str, rule: Rule, where: str = "", who: str = "") -> str:
    """The message for `rule` applied to an `op` it does not support."""
    return (
        f"{who or op}: expected a rule that supports {op}{where}, got {rule!r}, which "
        f"rewrites only {tuple(rule.ops)}. Give such layers another rule with a "
        "mapping, e.g. grad={'*conv*': rule, '*': 'custom'}."
    )


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
    """conv2d under `rule`; arguments as `_conv.conv2d_reference` takes them."""
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
    db = jnp.sum(g, axis=(0, 2, 3)) if cfg.has_bias else None
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
    return _pool.avg_pool2d_reference(x, win.cfg, win.divisor)


def _avg_pool_ruled_fwd(x, rule, win):
    # Nothing of x is saved: the geometry (static) and the rule are enough.
    return _pool.avg_pool2d_reference(x, win.cfg, win.divisor), rule


def _avg_pool_ruled_bwd(win, rule, g):
    dx = rule.avg_pool2d_input_grad(g, win)
    like = jax.ShapeDtypeStruct(g.shape[:2] + tuple(win.cfg.in_hw), g.dtype)
    return _checked(rule, "avg_pool2d_input_grad", dx, like), _zero_cotangent(rule)


_avg_pool_ruled.defvjp(_avg_pool_ruled_fwd, _avg_pool_ruled_bwd)

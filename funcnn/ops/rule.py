"""The backward-rule protocol: `Rule`, the base class every rule value derives
from, and `Window`, the pooling geometry a pool rule sees.

A rule tells conv2d, dense, max_pool2d and avg_pool2d how to compute their input
delta and parameter gradients (and, for straight-through rules, their forward).
Every method of `Rule` is the exact rule, written with the same functions as the
ops' hand-written rules (`conv2d_input_grad`, `conv2d_weight_grad`, ...); a rule
overrides only what it changes, e.g. feedback alignment overrides
`backward_weight` to swap W for B.

A rule travels through its op's custom VJP (`funcnn.ops.custom_vjp`) as an
ordinary, differentiable argument: it is a pytree whose children are its
`array_fields` (feedback alignment's B) and whose static part is every other
field. The backward (`funcnn.ops.ruled`) returns zeros for those arrays, so
differentiating with respect to a rule's array gives zero, which is the truth:
the forward does not read B. Only hashable configuration (ConvConfig, the
pooling geometry) goes into `nondiff_argnums`. A rule shapes reverse mode only:
in forward mode (jax.jvp) the tangent is JAX's own derivative of the rule's
forward method, for most rules the plain op.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.ops._windows import WindowConfig, pad_input, place_taps, tap_slice
from funcnn.ops.kernels.avg_pool import avg_pool_input_grad
from funcnn.ops.kernels.conv import (
    conv2d_input_grad,
    conv2d_reference,
    conv2d_weight_grad,
)
from funcnn.ops.kernels.dense import (
    dense_input_grad,
    dense_reference,
    dense_weight_grad,
)
from funcnn.ops.kernels.max_pool import max_pool_argmax, max_pool_input_grad

# The ops whose wrappers run a rule value (through the VJPs in funcnn.ops.ruled).
RULED_OPS = ("conv2d", "dense", "max_pool2d", "avg_pool2d")
"""The ops that run a rule value; a rule's `ops` lists those it rewrites."""
# Ops with a weight: a rule that does not rewrite one of these cannot quietly fall
# back to the exact rule, since "the rule's backward" would then be a lie. Ops
# without a weight (pools, unpooling) keep their exact rule under any rule that
# does not rewrite them.
WEIGHTED_OPS = ("conv2d", "dense", "conv_transpose2d")


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

    Arrays the methods see: x `(N, C_in, H, W)` or `(N, F_in)`; w `(C_out,
    C_in // G, KH, KW)` or `(F_out, F_in)`; g, the output deltas, `(N, C_out, OH,
    OW)` or `(N, F_out)`. The bias gradient is always the exact sum of the deltas.

    Attributes:
      ops: the ops whose backward (or forward) the rule rewrites, among
        `RULED_OPS`. Ops without a weight that are not listed keep their exact
        rule; a weighted op not listed (a conv under a dense-only rule) is an error.
      array_fields: names of the fields that hold arrays (e.g. a fixed B). They
        travel through the op's custom VJP as differentiable inputs with zero
        cotangents; every other field is static configuration and must be
        hashable (numbers, strings, tuples). An array field may hold a pytree
        of arrays (Kolen-Pollack's `{layer path: B}`).
      learned_feedback: True for a rule whose B lives in the train state.
      output_error: True for a rule that needs the network's output error.

    Arrays the methods see: x `(N, C_in, H, W)` or `(N, F_in)`; w `(C_out,
    C_in // G, KH, KW)` or `(F_out, F_in)`; g, the output deltas, `(N, C_out, OH,
    OW)` or `(N, F_out)`. The bias gradient is always the exact sum of the deltas.
    """

    ops: ClassVar[tuple[str, ...]] = ()
    array_fields: ClassVar[tuple[str, ...]] = ()
    # B lives in the train state and is updated by the optimizer (Kolen-Pollack):
    # `create_train_state(grad=...)` makes it, `bind(feedback=...)` reads it.
    learned_feedback: ClassVar[bool] = False
    # The rule replaces a layer's input delta by a projection of the network's
    # output error (direct feedback alignment): the outermost combinator routes
    # that error to the layers (`funcnn.nn.output_error`); no op can run it alone.
    output_error: ClassVar[bool] = False

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

    def bind(self, *, step: Any = None, feedback: Any = None) -> Rule:
        """The rule for one train step. `make_train_step` calls it with the
        state's step (an int32 scalar) and its learned feedback weights
        (`TrainState.feedback`, `{layer path: B}`), so that a rule can redraw B
        at every step (brSF) or read B from the state (Kolen-Pollack).
        Default: itself."""
        del step, feedback
        return self

    def backward_weight(self, w):
        """The weights the input delta flows through in place of `w` (B in the
        feedback-alignment papers). Default: `w`, the exact rule."""
        return w

    # ------------------------------------------------------------- conv2d

    def conv2d_forward(self, x, w, b, cfg):
        """The forward `(N, C_in, H, W)` -> `(N, C_out, OH, OW)`. Default: the
        plain conv (`funcnn.ops.conv2d_reference`)."""
        return conv2d_reference(x, w, b, cfg)

    def conv2d_input_grad(self, g, w, cfg, x_shape):
        """dX of shape `x_shape`. Default: the exact rule with `w` replaced by
        `self.backward_weight(w)`."""
        return conv2d_input_grad(g, self.backward_weight(w), cfg, x_shape)

    def conv2d_weight_grad(self, x, g, cfg, w_shape):
        """dW of shape `w_shape`. Default: the exact rule."""
        return conv2d_weight_grad(x, g, cfg, w_shape)

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
        return max_pool_argmax(x, win.cfg)[0]

    def max_pool2d_input_grad(self, x, y, g, win: Window):
        """dX `(N, C, H, W)` from the input x, the output y and the deltas g
        `(N, C, OH, OW)`. Default: each delta to its window's first maximum."""
        _, index = max_pool_argmax(x, win.cfg)
        return max_pool_input_grad(g, index, win.cfg)

    def avg_pool2d_input_grad(self, g, win: Window):
        """dX `(N, C, H, W)` from the deltas g `(N, C, OH, OW)`. Default: each
        delta divided by its window's count, to every tap."""
        return avg_pool_input_grad(g, win.cfg, win.divisor)


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

    Attributes:
        cfg: the pooling geometry (window, strides, padding, dilation, layout).
        divisor: for a mean pool, the static `(OH, OW)` window counts; else None.
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


def unsupported(op: str, rule: Rule, where: str = "", who: str = "") -> str:
    """The message for `rule` applied to an `op` it does not support."""
    return (
        f"{who or op}: expected a rule that supports {op}{where}, got {rule!r}, which "
        f"rewrites only {tuple(rule.ops)}. Give such layers another rule with a "
        "mapping, e.g. grad={'*conv*': rule, '*': 'custom'}."
    )


class StepRule:
    """A rule that replaces a train step's whole backward pass rather than one
    op's: `make_train_step(grad=...)` runs it, while ops, layers, `model.apply`,
    `backward_trace` and grad mappings, which need a rule per op, refuse it.
    `funcnn.rules.forward_gradient` is one. Subclasses are frozen dataclasses
    with hashable fields and set `name`."""

    name: ClassVar[str] = ""

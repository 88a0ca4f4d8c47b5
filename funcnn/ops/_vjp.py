"""`custom_vjp`: `jax.custom_vjp` that also runs forward-mode autodiff.

Every hand-written backward rule in funcnn is declared with it, as one would with
`jax.custom_vjp`:

```python
@partial(custom_vjp, nondiff_argnums=(3,))
def conv2d_custom(x, w, b, cfg):  # the plain forward
    return conv2d_reference(x, w, b, cfg)

conv2d_custom.defvjp(_conv2d_fwd, _conv2d_bwd)
```

Each call is one JAX primitive (a `jax.experimental.hijax.VJPHiPrimitive`):
- evaluated, jitted or vmapped, it runs the decorated function;
- in reverse mode (`jax.grad`, `jax.vjp`, `jacrev`) it runs `fwd`, then `bwd`
  on the deltas, exactly as `jax.custom_vjp` does: the hand-written rule, or the
  rule value an op carries;
- in forward mode (`jax.jvp`, `jacfwd`, `jax.linearize`) its tangent is a second
  primitive, linear in the input tangents: evaluated, it is JAX's jvp of the
  decorated function (or of `defvjp`'s `tangent`); transposed, it is `bwd`. So a
  tangent is the plain forward's, and wherever JAX turns a jvp into a gradient
  (`jax.checkpoint`, a transposed `jax.linearize`) the rule still runs.

Second order needs nothing more: `jax.hessian` and the forward-over-reverse
Hessian-vector product differentiate `fwd` and `bwd`, both written in
differentiable jax ops (as they did under `jax.custom_vjp`).

VJPHiPrimitive is an experimental JAX API, tested with JAX 0.10.2. The first call
checks it on a toy op; where it is missing or behaves otherwise, every
declaration runs as plain `jax.custom_vjp` (reverse mode unchanged), and forward
mode through a declared op raises an error that names the op and says why
(`forward_mode_available()` tells which case holds; under jit, or inside other
transformations, JAX's own "can't apply forward-mode autodiff (jvp) to a
custom_vjp function" may come first).

This module imports nothing of funcnn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

# The primitive classes (None on fallback) and why, set on first use.
_state: dict[str, Any] = {}


class custom_vjp:
    """`jax.custom_vjp(fun, nondiff_argnums)` that also runs forward mode.

    Args:
      fun: the plain forward, `fun(*args) -> out`, a pytree of arrays. It gives
        the output when no gradient is taken, and its jvp is the tangent in
        forward mode (unless `defvjp` is given a `tangent`).
      nondiff_argnums: positions of static, hashable arguments (configuration);
        `bwd` takes them first, as in `jax.custom_vjp`. Every other argument is
        a pytree of arrays (or None). Arguments are positional only.

    Call `defvjp(fwd, bwd)` before use.
    """

    def __init__(self, fun: Callable, nondiff_argnums: Sequence[int] = ()):
        self.fun = fun
        self.nondiff_argnums = tuple(sorted(nondiff_argnums))
        self.__name__ = getattr(fun, "__name__", "custom_vjp")
        self.__doc__ = fun.__doc__
        self.fwd: Callable = _undeclared
        self.bwd: Callable = _undeclared
        self.tangent: Callable = fun
        self._shape_of = jax.jit(fun, static_argnums=self.nondiff_argnums)
        self._fallback = jax.custom_vjp(fun, nondiff_argnums=self.nondiff_argnums)
        # Through self, so that either path runs what fwd and bwd are at call time.
        self._fallback.defvjp(lambda *a: self.fwd(*a), lambda *a: self.bwd(*a))

    def defvjp(self, fwd: Callable, bwd: Callable, *, tangent: Callable | None = None):
        """Sets the rule.

        Args:
          fwd: `fwd(*args) -> (out, res)`: the output (as `fun` gives it) and the
            residuals, a pytree of arrays.
          bwd: `bwd(*static, res, g) -> tuple`, one cotangent per non-static
            argument (None for a zero one), with `g` of out's structure.
          tangent: a function with `fun`'s signature and output structure whose
            jvp is the forward-mode tangent; default `fun`. For example the
            digital twin of a physical system that `fun` runs.
        """
        self.fwd, self.bwd = fwd, bwd
        self.tangent = self.fun if tangent is None else tangent
        return self

    def __repr__(self) -> str:
        return f"custom_vjp[{self.__name__}]"

    def __call__(self, *args):
        if self.fwd is _undeclared:
            raise AttributeError(
                f"{self.__name__}: expected defvjp(fwd, bwd) before the first call, "
                "got none. Declare the rule after the function, as with "
                "jax.custom_vjp."
            )
        classes, why = _backend()
        if classes is None:
            if _forward_mode_tracer(args):
                raise NotImplementedError(forward_mode_message(self.__name__, why))
            return self._fallback(*args)
        static = tuple((i, args[i]) for i in self.nondiff_argnums)
        dyn = tuple(a for i, a in enumerate(args) if i not in self.nondiff_argnums)
        out_aval = self._shape_of.trace(*args).out_avals
        return classes[0](self, static, _avals(dyn), out_aval)(*dyn)

    def merged(self, static, dyn) -> list:
        """The full argument list: `dyn` with the `(position, value)` pairs of
        `static` put back in place."""
        where, rest = dict(static), iter(dyn)
        return [
            where[i] if i in where else next(rest) for i in range(len(where) + len(dyn))
        ]


def _undeclared(*_):
    raise AssertionError("unreachable: __call__ checks defvjp first")


def forward_mode_available() -> bool:
    """Whether forward mode runs through funcnn's hand-written rules with this JAX
    (see `funcnn.ops._vjp`); when False, forward mode through them raises."""
    return _backend()[0] is not None


def forward_mode_message(name: str, why: str) -> str:
    return (
        f"{name}: expected forward-mode autodiff (jax.jvp, jacfwd, linearize) "
        "through the hand-written rule to run on "
        "jax.experimental.hijax.VJPHiPrimitive (tested with JAX 0.10.2), got JAX "
        f"{jax.__version__}, where it is unavailable: {why}. Reverse mode is "
        "unchanged. For forward mode, run this op with grad='autodiff', or "
        "install jax 0.10.2."
    )


def _backend() -> tuple[Any, str]:
    """((HandVJP, HandLin), "") where VJPHiPrimitive works, else (None, why)."""
    if "classes" not in _state:
        try:
            classes, why = _make_primitive_classes(), ""
            _self_test(classes)
        except Exception as e:  # any change of the experimental API
            classes, why = None, f"{type(e).__name__}: {e}".split("\n")[0]
        _state["classes"], _state["why"] = classes, why
    return _state["classes"], _state["why"]


def _self_test(classes):
    """A toy op through grad, jvp and a transposed linearize, abstractly (no
    compile, no FLOPs)."""
    toy = custom_vjp(lambda x: x * x)
    toy.defvjp(lambda x: (x * x, x), lambda x, g: (2 * x * g,))

    def f(x):
        return classes[0](toy, (), (jax.typeof(x),), jax.typeof(x))(x)

    def all_modes(x):
        _, f_lin = jax.linearize(f, x)
        return (
            jax.grad(lambda x: f(x).sum())(x),
            jax.jvp(f, (x,), (x,)),
            jax.linear_transpose(f_lin, x)(x),
        )

    jax.eval_shape(all_modes, jax.ShapeDtypeStruct((2,), jnp.float32))


def _forward_mode_tracer(args) -> bool:
    """On the fallback: whether a forward-mode trace certainly carries a tangent
    into `args` (an eager jvp or jacfwd, or jax.linearize).

    It reads JAX's tracers by duck type. A jvp over traced values can also be
    a gradient on its way (jax.checkpoint differentiates that way), so those
    pass, and JAX raises its own error if they were forward mode after all.
    """
    for t in jax.tree.leaves(args):
        kind = type(t).__name__
        if kind == "JVPTracer" and not isinstance(getattr(t, "primal", None), Tracer):
            return True
        if kind == "LinearizeTracer" and getattr(t._trace, "is_vjp", True) is False:
            return True
    return False


def _avals(tree):
    return jax.tree.map(jax.typeof, tree)


def _make_primitive_classes():
    """The two VJPHiPrimitive subclasses, built here so that a JAX without the
    experimental module fails in _backend (and falls back), not at import."""
    from jax.experimental import hijax  # lazy: experimental, may be absent

    zero = hijax.Zero

    def instantiate(tree):
        """Symbolic zeros as arrays (float0 for integers)."""
        return jax.tree.map(
            lambda z: z.instantiate() if isinstance(z, zero) else z,
            tree,
            is_leaf=lambda z: isinstance(z, zero),
        )

    def tangents_like(primals, tangents):
        """Symbolic zero tangents as arrays of their primal's shape (a Zero's
        own shape can be the batched one where VJPHiPrimitive vmaps a jvp)."""
        return jax.tree.map(
            lambda t, p: _zero_tangent(p) if isinstance(t, zero) else t,
            tangents,
            primals,
            is_leaf=lambda z: isinstance(z, zero),
        )

    class _Declared(hijax.VJPHiPrimitive):
        # VJPHiPrimitive sets each of `params` as an attribute, and hashes them.
        decl: custom_vjp
        static: tuple  # (position, value) of each static argument

        def __init__(self, decl: custom_vjp, static, in_avals, out_aval):
            self.in_avals, self.out_aval = in_avals, out_aval
            in_flat, in_tree = jax.tree.flatten(in_avals)
            out_flat, out_tree = jax.tree.flatten(out_aval)
            sig = (tuple(in_flat), in_tree, tuple(out_flat), out_tree)
            self.params = dict(decl=decl, static=static, sig=sig)
            super().__init__()

        def _call(self, f, dyn):
            return f(*self.decl.merged(self.static, dyn))

        def _bwd(self, res, g, arg_avals) -> tuple:
            """bwd's cotangents, checked, with None as symbolic zeros."""
            decl = self.decl
            cts = decl.bwd(*[v for _, v in self.static], res, instantiate(g))
            n = len(arg_avals)
            if not isinstance(cts, (tuple, list)) or len(cts) != n:
                got = len(cts) if isinstance(cts, (tuple, list)) else type(cts).__name__
                raise ValueError(
                    f"{decl.__name__}: expected bwd to return a tuple of {n} "
                    f"cotangents, one per non-static argument, got {got}."
                )
            return tuple(
                jax.tree.map(lambda a: zero(a.to_ct_aval()), avals)
                if ct is None
                else jax.tree.map(lambda a, c: _checked(decl.__name__, a, c), avals, ct)
                for ct, avals in zip(cts, arg_avals)
            )

        def batch(self, axis_data, args, dims):
            # vmap: VJPHiPrimitive's VmapOf vmaps each method, outputs batched
            # along axis 0. JAX asks even when no input is batched (a constant
            # inside jacfwd): then the output is not batched either.
            if not jax.tree.leaves(dims):
                return self(*args), jax.tree.map(lambda _: None, self.out_aval)
            return super().batch(axis_data, args, dims)

        def batch_dim_rule(self, axis_data, dims):
            del axis_data, dims
            return jax.tree.map(lambda _: 0, self.out_aval)

    class HandVJP(_Declared):
        """One call of a `custom_vjp` declaration."""

        def __repr__(self):
            return repr(self.decl)

        def expand(self, *dyn):
            return self._call(self.decl.fun, dyn)

        def vjp_fwd(self, nzs_in, *dyn):
            del nzs_in  # fwd saves what bwd needs, whatever is perturbed
            return self._call(self.decl.fwd, dyn)

        def vjp_bwd_retval(self, res, g):
            return self._bwd(res, g, self.in_avals)

        def jvp(self, primals, tangents):
            y, res = self._call(self.decl.fwd, primals)
            return y, self._tangent(primals, res, tangents)

        def lin(self, nzs_in, *primals):
            del nzs_in
            y, res = self._call(self.decl.fwd, primals)
            return y, (primals, res)

        def linearized(self, saved, *tangents):
            primals, res = saved
            return self._tangent(primals, res, tangents)

        def _tangent(self, primals, res, tangents):
            tangents = tangents_like(primals, tangents)
            avals = (self.in_avals, _avals(res), _avals(tangents))
            out = jax.tree.map(lambda a: a.to_tangent_aval(), self.out_aval)
            lin = HandLin(self.decl, self.static, avals, out)
            return lin(primals, res, tangents)

    class HandLin(_Declared):
        """The tangent of one call, `(primals, res, tangents) -> out tangent`,
        linear in the tangents: evaluated, the jvp of the declaration's tangent
        function; transposed, its bwd."""

        def __repr__(self):
            return f"{self.decl!r}.tangent"

        def expand(self, primals, res, tangents):
            del res  # the plain jvp needs only the primals
            tangent = self.decl.tangent
            return jax.jvp(lambda *p: self._call(tangent, p), primals, tangents)[1]

        def transpose(self, g, primals, res, tangents):
            del primals
            cts = self._bwd(res, g, self.in_avals[0])
            for acc, ct in zip(tangents, cts):
                jax.tree.map(_accumulate, acc, ct)

        # Second order through a tangent (forward-over-forward, reverse over
        # forward): the jvp's own derivatives, with bwd for the tangent inputs.

        def jvp(self, primals, tangents):
            return jax.jvp(self.expand, primals, tangents_like(primals, tangents))

        def vjp_fwd(self, nzs_in, *args):
            del nzs_in
            return self.expand(*args), args

        def vjp_bwd_retval(self, saved, g):
            primals, res, tangents = saved
            d_tangents = self._bwd(res, g, self.in_avals[0])
            g = instantiate(g)
            plain = jax.vjp(lambda p: self.expand(p, res, tangents), primals)[1]
            d_res = jax.tree.map(lambda a: zero(a.to_ct_aval()), self.in_avals[1])
            return (plain(g)[0], d_res, d_tangents)

        def lin(self, nzs_in, *args):
            del nzs_in
            return jax.linearize(self.expand, *args)

        def linearized(self, f_lin, *tangents):
            return f_lin(*instantiate(tangents))  # only jax.linearize comes here

    return HandVJP, HandLin


def _zero_tangent(primal):
    """Zeros in the tangent space of `primal` (float0 for integers and bools)."""
    dtype = jnp.result_type(primal)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.zeros(jnp.shape(primal), dtype)
    return np.zeros(jnp.shape(primal), jax.dtypes.float0)


def _checked(name: str, aval, ct):
    """One cotangent from bwd, after checking it fits its argument `aval`."""
    dtype = getattr(ct, "dtype", None)
    if dtype is None or dtype == jax.dtypes.float0:
        return ct  # a symbolic zero, or the no-cotangent of an integer input
    if ct.shape != aval.shape or dtype != aval.dtype:
        raise ValueError(
            f"{name}: expected bwd to return a cotangent of shape {aval.shape} and "
            f"dtype {aval.dtype} (its argument's), got shape {ct.shape} and dtype "
            f"{dtype}."
        )
    return ct


def _accumulate(acc, ct):
    """Adds a transposed tangent's cotangent to JAX's accumulator, if any (a
    known input, e.g. an instantiated zero tangent, has none)."""
    if hasattr(acc, "accum") and getattr(ct, "dtype", None) != jax.dtypes.float0:
        acc.accum(ct)

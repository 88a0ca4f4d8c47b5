"""`Physical`: a layer whose forward pass is a physical system and whose backward
pass is the VJP of a differentiable digital twin (physics-aware training, Wright
et al., Nature 2022).

The forward value is exactly what the system returns: a JAX function, or (with
`host=True`) any Python code on numpy arrays, a simulator or an instrument driver,
called through `jax.pure_callback`. The backward pass is the VJP of the twin,
evaluated at the real input the layer received and its current params, under
whatever rule `grad=` gives the twin's layers: PAT's `make_pat_func(f_forward,
f_backward)`, written as one `funcnn.ops.custom_vjp` (`pat_function`), so that
forward mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) runs through the layer
too, with the twin's tangent at the real input.

Every derivative of the system, at any order, is the twin's: inside the custom
VJP the system call itself carries the twin's tangent (a `jax.custom_jvp`), so
grad-of-grad and forward-over-reverse Hessians also differentiate the twin, never
the system (which, for an instrument, has no derivative to take). The tangent is
the twin's plain forward's (`grad="autodiff"` at its ops): a hand-written rule
changes the backward only, so this is the twin's own tangent.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from funcnn import rules
from funcnn.nn.core import Layer, describe, leaf
from funcnn.ops import custom_vjp

LABEL = "Physical"


def pat_function(
    measure: Callable, twin: Callable, tangent: Callable | None = None
) -> Callable:
    """PAT's autodifferentiable function: `f(params, x, key) -> y`.

    Args:
      measure: `measure(params, x, key) -> y`, the forward value.
      twin: `twin(params, x, key) -> y`, differentiable; its VJP at the saved
        `params` and `x` is the backward pass.
      tangent: the function whose jvp at the real `params` and `x` is the
        forward-mode tangent (default `twin`).

    Returns:
      `f` with `f(params, x, key) == measure(params, x, key)` and
      `jax.vjp(f, params, x, key)[1](g) == (*jax.vjp(twin_at_key, params, x)[1](g),
      None)`: the key gets no cotangent.
    """

    @custom_vjp
    def f(params, x, key):
        return measure(params, x, key)

    def f_fwd(params, x, key):
        # The real input and the params the system ran with: the twin's VJP is
        # taken there, not at the twin's own (different) forward trajectory.
        return measure(params, x, key), (params, x, key)

    def f_bwd(res, g):
        params, x, key = res
        _, pullback = jax.vjp(lambda p, x: twin(p, x, key), params, x)
        return (*pullback(g), None)

    f.defvjp(f_fwd, f_bwd, tangent=twin if tangent is None else tangent)
    return f


def _with_twin_tangent(system: Callable, twin: Callable) -> Callable:
    """`system`, whose tangent (under any derivative of any order) is the twin's."""

    @jax.custom_jvp
    def measured(params, x, key):
        return system(params, x, key)

    @measured.defjvp
    def measured_jvp(primals, tangents):
        params, x, key = primals
        dparams, dx, _ = tangents
        _, dy = jax.jvp(lambda p, x: twin(p, x, key), (params, x), (dparams, dx))
        return system(params, x, key), dy

    return measured


def _takes_key(system: Callable) -> tuple[bool, bool]:
    """(the system names a `key` parameter, that parameter has a default)."""
    try:
        found = inspect.signature(system).parameters.get("key")
    except (TypeError, ValueError):  # builtins without a signature
        return False, False
    if found is None:
        return False, False
    return True, found.default is not inspect.Parameter.empty


def _where(path: str) -> str:
    return f"{LABEL} at layer {path!r}" if path else LABEL


def _spec_text(tree: Any) -> str:
    parts = [
        f"{tuple(a.shape)} {np.dtype(a.dtype).name}"
        for a in jax.tree_util.tree_leaves(tree)
    ]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def _check_structure(where: str, y: Any, expected: Any, cast: str) -> None:
    """Raises unless `y` has the tree structure, shapes and dtypes of `expected`."""
    tree = jax.tree_util
    same_tree = tree.tree_structure(y) == tree.tree_structure(expected)
    pairs = zip(tree.tree_leaves(y), tree.tree_leaves(expected))
    if same_tree and all(
        tuple(np.shape(a)) == tuple(e.shape) and np.dtype(a.dtype) == e.dtype
        for a, e in pairs
    ):
        return
    got = _spec_text(y) if same_tree else describe(y)
    raise ValueError(
        f"{where}: expected the system to return the twin's output, "
        f"{_spec_text(expected)}, got {got}. Return an array of that shape and "
        f"dtype{cast}."
    )


def _nonfinite_message(where: str) -> str:
    return (
        f"{where}: expected finite values from the system, got NaN or inf. Check "
        "the system (a saturated or disconnected instrument, a diverged "
        "simulator), or build the layer with check=False to let the train step "
        "skip such updates (it reports metrics['nonfinite'])."
    )


def _raise_if_nonfinite(where: str, finite) -> None:
    if not bool(np.all(finite)):
        raise ValueError(_nonfinite_message(where))


def _check_finite(where: str, y: Any) -> None:
    """Raises if `y` holds NaN or inf: at once for concrete values, else when the
    compiled program runs (a `jax.debug.callback` that moves one bool per leaf
    to the host)."""
    leaves = jax.tree_util.tree_leaves(y)
    finite = [jnp.all(jnp.isfinite(a)) for a in leaves]
    if not any(isinstance(f, Tracer) for f in finite):
        _raise_if_nonfinite(where, [bool(f) for f in finite])
        return
    jax.debug.callback(partial(_raise_if_nonfinite, where), jnp.stack(finite))


def _host_system(
    system: Callable, where: str, expected: Any, takes_key: bool, check: bool
) -> Callable:
    """`system` on numpy arrays as a JAX function of (params, x, key)."""

    def on_host(params, x, key_data):
        kwargs = {"key": key_data} if takes_key else {}
        y = system(params, x, **kwargs)
        y = jax.tree_util.tree_map(np.asarray, y)
        _check_structure(where, y, expected, ", e.g. y.astype(np.float32)")
        if check:
            leaves = jax.tree_util.tree_leaves(y)
            _raise_if_nonfinite(where, [np.isfinite(a).all() for a in leaves])
        return y

    def call(params, x, key):
        key_data = None
        if takes_key and key is not None:
            typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            key_data = jax.random.key_data(key) if typed else key
        # "sequential": under vmap the system runs once per mapped element and
        # sees that element's unbatched arrays, as an instrument would.
        return jax.pure_callback(
            on_host, expected, params, x, key_data, vmap_method="sequential"
        )

    return call


def Physical(
    system: Callable, twin: Layer, *, host: bool = False, check: bool = True
) -> Layer:
    """A layer whose forward is a physical system and whose backward is the VJP of
    its differentiable digital twin at the real input (physics-aware training).

    The layer has the twin's params and output shape, and its name (so its params
    sit under the key the twin would have, e.g. `"03_conv"`, and a model trained
    on the twin loads into the physical model unchanged). `grad=` reaches the
    twin's layers at the layer's own path, as if the twin stood there: feedback
    alignment draws the same B. A twin of several layers (e.g. `serial(Conv2D(8,
    3), Relu())` at "03_serial") keeps its layers' paths ("03_serial/00_conv")
    in `Layer.children`, for grad mappings and `rules.feedback_weights`. The
    layer hook (`funcnn.backward_trace`) sees the Physical layer as one leaf,
    whose output is the measured one: no twin forward runs in the forward pass.

    Args:
      system: `system(params, x) -> y`, or `system(params, x, key) -> y` for a
        noisy system. `params` are the twin's (e.g. `{"w": (C_out, C_in, KH, KW),
        "b": (C_out,)}`), `x` the layer's input, e.g. `(N, C_in, H, W)`; `y` must
        have the twin's output shape and dtype, e.g. `(N, C_out, OH, OW)`. A JAX
        function unless `host`. The `key` is a split of the one given to `apply`
        (make_train_step gives one every step; make_eval_step gives none): give it
        a default (`key=None`) to run without one.
      twin: any funcnn `Layer` without state (no BatchNorm inside: its running
        statistics would never update); its `init` makes the params.
      host: the system is Python on numpy arrays (params as a dict of numpy
        arrays, x a numpy array; the key, if it takes one, as the raw uint32 key
        data, or None), called through `jax.pure_callback`, also under `jax.jit`.
        Under `jax.vmap` it runs once per mapped element.
      check: check that the system's output is finite, on every call (under jit a
        `jax.debug.callback` carries one bool per call to the host). Shapes and
        dtypes are always checked: for a JAX system while tracing, for a host
        system on the host.

    Returns:
      The `Layer`. Its apply raises ValueError (naming the layer path) for an
      output of the wrong shape or dtype or with NaN/inf, and for a system that
      takes a key without default given none. Under `jax.jit` a failed check on
      the host surfaces as `jax.errors.JaxRuntimeError` carrying that message.

    Transformations: `jax.grad` gives the twin's VJP; grad-of-grad and Hessians
    differentiate the twin (the system's tangent is the twin's). Forward mode
    (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) gives the measured output with
    the twin's tangent at the real input (`funcnn.ops.custom_vjp`). A host
    system under `jax.linearize` inside `jax.vmap` is not supported (see
    `funcnn.ops.custom_vjp`).
    """
    if not isinstance(twin, Layer):
        raise TypeError(
            f"{LABEL}: expected a funcnn Layer as twin, got {type(twin).__name__}. "
            "Pass the differentiable model, e.g. Physical(device, Conv2D(8, 3))."
        )
    if not callable(system):
        raise TypeError(
            f"{LABEL}: expected a callable system(params, x) -> y, got "
            f"{type(system).__name__}."
        )
    takes_key, key_optional = _takes_key(system)

    def init(key, input_shape):
        shape, params, state = twin.init(key, input_shape)
        if jax.tree_util.tree_leaves(state):
            raise ValueError(
                f"{LABEL}: expected a twin without state, got state "
                f"{describe(state)} from {twin.name!r}. The system's forward never "
                "runs the twin, so its running statistics would never update: put "
                "BatchNorm outside the Physical layer."
            )
        return shape, params, state

    def apply(params, state, x, *, train=False, key=None, grad="custom"):
        where = _where(rules.path_of(grad))
        if takes_key and key is None and not key_optional:
            raise ValueError(
                f"{where}: expected key= for the system, which takes a key for its "
                "noise, got key=None. Pass apply(..., key=jax.random.key(0)) "
                "(make_train_step passes one each step, make_eval_step none), or "
                "give the system's key a default: def system(params, x, key=None)."
            )
        # keys: None, or (the system's key, the twin's key), split from `key`.
        keys = None if key is None else tuple(jax.random.split(key))

        def twin_out(p, x, keys, grad=grad):
            k = None if keys is None else keys[1]
            return twin.apply(p, state, x, train=train, key=k, grad=grad)[0]

        def plain_twin(p, x, keys):  # the tangent: rules change only the backward
            return twin_out(p, x, keys, grad="autodiff")

        expected = jax.eval_shape(lambda p, x: plain_twin(p, x, keys), params, x)
        if host:
            system_call = _host_system(system, where, expected, takes_key, check)
        else:

            def system_call(p, x, k):
                y = system(p, x, key=k) if takes_key else system(p, x)
                _check_structure(where, y, expected, "")
                if check:
                    _check_finite(where, y)
                return y

        def run(p, x, keys):
            return system_call(p, x, None if keys is None else keys[0])

        f = pat_function(_with_twin_tangent(run, plain_twin), twin_out, plain_twin)
        return f(params, x, keys), state

    layer = leaf(LABEL, twin.name, init, apply, info=twin.info)
    # The twin's layers, so that grad= mappings, rules.check_model and
    # rules.feedback_weights see the layers whose rules the backward runs.
    return layer._replace(children=twin.children)

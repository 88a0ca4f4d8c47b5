"""Zero probes at leaf layers: how `jax.grad` sees every layer's deltas.

Adding a zero array `z` to a value `v` changes nothing in the forward pass, and
`dL/dz = dL/dv`. `value_and_grad_with_probes` adds such zeros at the input and the
output of every leaf layer through the layer protocol's `hook`, and differentiates
the objective with respect to the parameters and those zeros together: one forward
and one backward pass give the parameter gradients and each layer's deltas
`dL/d(input)` and `dL/d(output)`. The backward pass through each layer is the one
the layer already uses (funcnn's hand-written rules with `grad="custom"`), because
the zeros sit outside the layers' ops.

The probes' shapes come from a first, abstract pass (`leaf_specs`, with
`jax.eval_shape`), which costs tracing time only. Without a hook nothing here runs:
a plain train step is not changed.

`funcnn.backward_trace` and `make_train_step(layer_stats=True)` are built on this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnn.nn.core import Layer

# objective(params, hook) -> (scalar loss, aux); hook may be None.
Objective = Callable[[Any, Callable | None], tuple[jax.Array, Any]]


class LeafSpec(NamedTuple):
    """One leaf layer as the forward pass met it."""

    path: str  # "03_conv", "05_residual/00_conv"; a root leaf: its name
    keys: tuple[str, ...]  # the path's keys into params, () for a root leaf
    name: str  # the layer's name, e.g. "conv"
    input: Any  # ShapeDtypeStruct, or a tuple of them for tuple inputs
    output: Any  # the same for the output


def path_name(keys: tuple[str, ...], layer: Layer) -> str:
    """The path string of a leaf: its keys joined by "/", or its name at the root."""
    return "/".join(keys) or layer.name


def subtree(tree: Any, keys: tuple[str, ...]) -> Any:
    """`tree[k0][k1]...`: a leaf's part of a params (or grads) tree."""
    for key in keys:
        tree = tree[key]
    return tree


def _structs(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree
    )


def _describe(tree: Any) -> str:
    parts = [
        f"{tuple(a.shape)} {jnp.dtype(a.dtype).name}"
        for a in jax.tree_util.tree_leaves(tree)
    ]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def leaf_specs(
    objective: Objective, params: Any, *, func: str | None = None, context: str = ""
) -> list[LeafSpec]:
    """Shapes and dtypes at every leaf layer, in the order the forward pass runs
    them, from an abstract evaluation of `objective(params, hook)`.

    Args:
        objective: `objective(params, hook) -> (loss, aux)`, which applies the model
            with `hook=hook`.
        params: the model's params (arrays or tracers).
        func: with a name, a ValueError or TypeError from the model or the loss is
            raised again as `"{func}: {context}; {where}: {error}"`, naming the layer
            that rejected its input (or the loss); without, errors pass unchanged.
        context: what the caller gave, e.g. the batch's shapes.

    Raises:
        ValueError: if one path is run twice or a layer's input or output is not
            floating point (a zero probe there would have no gradient).
    """
    specs: list[LeafSpec] = []
    running: list[tuple[str, Any]] = []

    def hook(keys, layer, call, x):
        path = path_name(keys, layer)
        running.append((path, x))
        y, state = call(x)
        running.pop()
        specs.append(LeafSpec(path, tuple(keys), layer.name, _structs(x), _structs(y)))
        return y, state

    try:
        jax.eval_shape(lambda p: objective(p, hook), params)
    except (ValueError, TypeError) as err:
        if func is None:
            raise
        if running:
            path, x = running[-1]
            where = f"the layer {path!r} rejected its input {_describe(x)}"
        else:
            where = "the loss rejected the model's output"
        raise type(err)(f"{func}: {context}; {where}: {err}") from err
    seen = set()
    for spec in specs:
        if spec.path in seen:
            raise ValueError(
                f"{func or 'leaf_specs'}: expected each leaf layer path to run once, "
                f"got {spec.path!r} twice. Give each use of a layer its own place in "
                "a combinator."
            )
        seen.add(spec.path)
        for where, tree in (("input", spec.input), ("output", spec.output)):
            for a in jax.tree_util.tree_leaves(tree):
                if not jnp.issubdtype(a.dtype, jnp.inexact):
                    raise ValueError(
                        f"{func or 'leaf_specs'}: expected floating-point values at "
                        f"every layer, got {jnp.dtype(a.dtype).name} at the {where} "
                        f"of {spec.path!r}. Cast the batch x to float32."
                    )
    return specs


def _zeros(structs: Any) -> Any:
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structs)


def _add(value: Any, zero: Any) -> Any:
    # tree_map keeps tuple inputs and outputs (Split, Concat, branches) as tuples.
    return jax.tree_util.tree_map(jnp.add, value, zero)


class Probed(NamedTuple):
    """What `value_and_grad_with_probes` returns."""

    value: jax.Array  # the objective's scalar loss
    aux: Any  # the objective's aux
    grads: Any  # dL/dparams, a tree like params
    delta_in: dict | None  # path -> dL/d(layer input), None unless asked for
    delta_out: dict  # path -> dL/d(layer output)
    taps: dict  # path -> (input, output) activations, {} unless asked for


def value_and_grad_with_probes(
    objective: Objective,
    params: Any,
    specs: list[LeafSpec],
    *,
    inputs: bool = True,
    record: bool = False,
) -> Probed:
    """One forward and backward pass of `objective` with zero probes at every leaf.

    Args:
        objective: `objective(params, hook) -> (loss, aux)`, as for `leaf_specs`.
        params: the model's params.
        specs: `leaf_specs(objective, params)`.
        inputs: also probe each layer's input (for `delta_in`); outputs always are.
        record: also return each layer's input and output activations.

    Returns:
        A `Probed`. Each delta has its value's structure: an array, or a tuple.
    """
    probes_in = {s.path: _zeros(s.input) for s in specs} if inputs else None
    probes_out = {s.path: _zeros(s.output) for s in specs}

    def probed(params, probes_in, probes_out):
        taps = {}

        def hook(keys, layer, call, x):
            path = path_name(keys, layer)
            if probes_in is not None:
                x = _add(x, probes_in[path])
            y, state = call(x)
            y = _add(y, probes_out[path])
            if record:
                taps[path] = (x, y)
            return y, state

        value, aux = objective(params, hook)
        return value, (aux, taps)

    (value, (aux, taps)), (grads, d_in, d_out) = jax.value_and_grad(
        probed, argnums=(0, 1, 2), has_aux=True
    )(params, probes_in, probes_out)
    return Probed(value, aux, grads, d_in, d_out, taps)

"""Combinators that build networks from layers, and the split / fusion layers.

Parameters and state of a combinator are dicts keyed `"{index:02d}_{layer name}"`,
so tree paths read like `['03_dense']['w']` in reports and checkpoints, and sort in
layer order. A combinator's children are its `Layer.children`; their key paths
joined by "/" (e.g. `"05_residual/00_conv"`) name the layers in `grad=` mappings
and in `funcnn.backward_trace`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from funcnn import rules
from funcnn.nn import output_error
from funcnn.nn.core import Layer, check_keywords, describe, leaf, leaf_paths, prefixed
from funcnn.rules import dfa


def _keys(layers: Sequence[Layer]) -> list[str]:
    return [f"{i:02d}_{layer.name}" for i, layer in enumerate(layers)]


def _split_key(key, n: int):
    return [None] * n if key is None else list(jax.random.split(key, n))


def _check_layers(label: str, layers: Sequence[Any]) -> None:
    if not layers:
        raise TypeError(f"{label}: expected one or more Layer objects, got none.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            factory = getattr(layer, "__module__", "").startswith("funcnn.nn")
            name = getattr(layer, "__name__", "")
            hint = f" Call the factory: {name}() rather than {name}." if factory else ""
            raise TypeError(
                f"{label}: expected Layer objects, got {type(layer).__name__} at "
                f"position {i} ({layer!r}).{hint}"
            )


def _check_tree(label: str, what: str, tree: Any, names: Sequence[str]) -> None:
    """A combinator's params or state must be a dict with exactly its child keys."""
    if isinstance(tree, Mapping) and set(tree) == set(names):
        return
    if isinstance(tree, Mapping):
        missing = sorted(set(names) - set(tree))
        extra = sorted(set(tree) - set(names))
        got = f"missing {missing}" + (f" and extra {extra}" if extra else "")
    else:
        got = describe(tree)
    raise ValueError(
        f"{label}.apply: expected {what} with keys {list(names)}, got {got}. Pass "
        f"the {what} that this model's init returned (another model's {what}, or "
        "params and state swapped, do not fit)."
    )


def combinator(
    label: str,
    name: str,
    children: Sequence[tuple[str, Layer]],
    init: Callable,
    run: Callable,
) -> Layer:
    """Builds a combinator: `run(call, x)` computes the output, where
    `call(i, x) -> y` applies child i with the right params, state, key, grad and
    hook. Checks keywords and the params/state keys before anything runs."""
    names = [key for key, _ in children]

    def apply(params, state, x, **kwargs):
        check_keywords(label, kwargs)
        _check_tree(label, "params", params, names)
        _check_tree(label, "state", state, names)
        grad = kwargs.get("grad", "custom")
        if isinstance(grad, Mapping):  # the outermost combinator checks the map
            rules.check_patterns(grad, leaf_paths(layer), func=label)
        if not isinstance(grad, rules.Scoped) and dfa.uses_output_error(grad):
            # The outermost combinator routes the output error to DFA layers.
            return output_error.apply(layer, params, state, x, kwargs)
        keys = _split_key(kwargs.get("key"), len(children))
        new_state = {}

        def call(i, x):
            key, child = children[i]
            kw: dict[str, Any] = dict(kwargs, key=keys[i])
            kw["grad"] = rules.scope(grad, key)
            kw["hook"] = prefixed(kwargs.get("hook"), key)
            y, new_state[key] = child.apply(params[key], state[key], x, **kw)
            return y

        return run(call, x), new_state

    layer = Layer(init, apply, name, tuple(children))
    return layer


def _init_children(children, key, shapes):
    """Runs each child's init on its input shape; returns (shapes, params, state)."""
    out, params, state = [], {}, {}
    for (name, layer), k, s in zip(
        children, jax.random.split(key, len(children)), shapes
    ):
        shape, params[name], state[name] = layer.init(k, s)
        out.append(shape)
    return out, params, state


def serial(*layers: Layer) -> Layer:
    """Apply layers one after another; `grad`, `train` and a split `key` reach all."""
    _check_layers("serial", layers)
    children = list(zip(_keys(layers), layers))

    def init(key, input_shape):
        params, state = {}, {}
        for (name, layer), k in zip(children, jax.random.split(key, len(children))):
            input_shape, params[name], state[name] = layer.init(k, input_shape)
        return input_shape, params, state

    def run(call, x):
        for i in range(len(children)):
            x = call(i, x)
        return x

    return combinator("serial", "serial", children, init, run)


def parallel(*layers: Layer) -> Layer:
    """Apply layer i to element i of a tuple input; returns a tuple."""
    _check_layers("parallel", layers)
    children = list(zip(_keys(layers), layers))

    def init(key, input_shape):
        if (
            not isinstance(input_shape, tuple)
            or len(input_shape) != len(layers)
            or not all(isinstance(s, tuple) for s in input_shape)
        ):
            raise ValueError(
                f"parallel: expected a tuple of {len(layers)} input shapes, got "
                f"{input_shape!r}. Use branches(...) to feed one input to every "
                "layer, or FanOut/Split before parallel."
            )
        shapes, params, state = _init_children(children, key, input_shape)
        return tuple(shapes), params, state

    def run(call, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(children):
            raise ValueError(
                f"parallel: expected a tuple of {len(children)} inputs, got "
                f"{describe(xs)}."
            )
        return tuple(call(i, x) for i, x in enumerate(xs))

    return combinator("parallel", "parallel", children, init, run)


def branches(*layers: Layer) -> Layer:
    """Feed the same input to every layer (the parallel branches of an Inception
    block); returns the tuple of their outputs. Follow with Concat() or Add()."""
    _check_layers("branches", layers)
    children = list(zip(_keys(layers), layers))

    def init(key, input_shape):
        shapes, params, state = _init_children(
            children, key, [input_shape] * len(children)
        )
        return tuple(shapes), params, state

    def run(call, x):
        return tuple(call(i, x) for i in range(len(children)))

    return combinator("branches", "branches", children, init, run)


def residual(*block: Layer, shortcut: Layer | None = None) -> Layer:
    """`serial(*block)(x) + shortcut(x)`: a residual block (He et al. 2016).

    The block's layers are keyed `00_conv`, `01_batchnorm`, ... and the shortcut
    `shortcut` (the identity by default; pass e.g. a 1x1 Conv2D with stride when
    the block changes the shape), so paths read `"05_residual/00_conv"`.
    """
    _check_layers("residual", block)
    if shortcut is not None:
        _check_layers("residual", [shortcut])
    children = list(zip(_keys(block), block))
    children.append(("shortcut", shortcut if shortcut is not None else Identity()))

    def init(key, input_shape):
        k_block, k_short = jax.random.split(key)
        params, state = {}, {}
        shape = input_shape
        for (name, layer), k in zip(
            children[:-1], jax.random.split(k_block, len(block))
        ):
            shape, params[name], state[name] = layer.init(k, shape)
        short, params["shortcut"], state["shortcut"] = children[-1][1].init(
            k_short, input_shape
        )
        if tuple(short) != tuple(shape):
            raise ValueError(
                f"residual: expected the block and the shortcut to give one shape, "
                f"got {shape} from the block and {short} from the shortcut. Give a "
                "shortcut that matches, e.g. Conv2D(C_out, 1, stride=S)."
            )
        return shape, params, state

    def run(call, x):
        y = x
        for i in range(len(block)):
            y = call(i, y)
        return y + call(len(block), x)

    return combinator("residual", "residual", children, init, run)


def FanOut(n: int) -> Layer:
    """Copy the input into an n-tuple."""

    def init(key, input_shape):
        del key
        return (input_shape,) * n, {}, {}

    def apply(params, state, x, **_):
        del params
        return (x,) * n, state

    return leaf("FanOut", "fanout", init, apply)


def Identity() -> Layer:
    """Return the input unchanged."""

    def init(key, input_shape):
        del key
        return input_shape, {}, {}

    def apply(params, state, x, **_):
        del params
        return x, state

    return leaf("Identity", "identity", init, apply)


def Add() -> Layer:
    """Sum a tuple of equally shaped inputs (residual fusion)."""

    def init(key, input_shape):
        del key
        if len({tuple(s) for s in input_shape}) != 1:
            raise ValueError(
                f"Add: expected inputs of one shape, got shapes {input_shape!r}."
            )
        return input_shape[0], {}, {}

    def apply(params, state, xs, **_):
        del params
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total, state

    return leaf("Add", "add", init, apply)


def Concat(axis: int = 1) -> Layer:
    """Fusion: concatenate a tuple of inputs along `axis` (channels by default)."""

    def init(key, input_shape):
        del key
        shapes = [tuple(s) for s in input_shape]
        ax = axis % len(shapes[0])
        rest = {s[:ax] + s[ax + 1 :] for s in shapes}
        if len(rest) != 1:
            raise ValueError(
                f"Concat: expected inputs that agree on every axis but {axis}, got "
                f"shapes {shapes}."
            )
        total = sum(s[ax] for s in shapes)
        first = shapes[0]
        return first[:ax] + (total,) + first[ax + 1 :], {}, {}

    def apply(params, state, xs, **_):
        del params
        return jnp.concatenate(xs, axis=axis), state

    return leaf("Concat", "concat", init, apply)


def Split(sections: int | Sequence[int], axis: int = 1) -> Layer:
    """Split: cut the input along `axis` into `sections` equal parts, or into parts
    of the given sizes; returns a tuple."""

    def sizes_for(size: int) -> list[int]:
        if isinstance(sections, int):
            if sections < 1 or size % sections:
                raise ValueError(
                    f"Split: expected {sections} sections to divide axis {axis} of "
                    f"size {size}."
                )
            return [size // sections] * sections
        if sum(sections) != size or min(sections) < 1:
            raise ValueError(
                f"Split: expected positive section sizes summing to {size} (axis "
                f"{axis}), got {list(sections)}."
            )
        return list(sections)

    def init(key, input_shape):
        del key
        ax = axis % len(input_shape)
        sizes = sizes_for(input_shape[ax])
        return (
            tuple(input_shape[:ax] + (s,) + input_shape[ax + 1 :] for s in sizes),
            {},
            {},
        )

    def apply(params, state, x, **_):
        del params
        sizes = sizes_for(x.shape[axis])
        cuts = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        return tuple(jnp.split(x, cuts, axis=axis)), state

    return leaf("Split", "split", init, apply)

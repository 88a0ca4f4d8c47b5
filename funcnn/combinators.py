"""Combinators that build networks from layers, and the split / fusion layers.

Parameters and state of a combinator are dicts keyed `"{index:02d}_{layer name}"`,
so tree paths read like `['03_dense']['w']` in reports and checkpoints, and sort in
layer order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from funcnn.layers import Layer


def _keys(layers: Sequence[Layer]) -> list[str]:
    return [f"{i:02d}_{layer.name}" for i, layer in enumerate(layers)]


def _split_key(key, n: int):
    return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer) -> Layer:
    """Apply layers one after another; `grad`, `train` and a split `key` reach all."""
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise TypeError(f"serial: expected one or more Layer objects, got {layers!r}.")
    names = _keys(layers)

    def init(key, input_shape):
        params, state = {}, {}
        for name, layer, k in zip(names, layers, jax.random.split(key, len(layers))):
            input_shape, params[name], state[name] = layer.init(k, input_shape)
        return input_shape, params, state

    def apply(params, state, x, *, key=None, **kwargs):
        new_state = {}
        for name, layer, k in zip(names, layers, _split_key(key, len(layers))):
            x, new_state[name] = layer.apply(
                params[name], state[name], x, key=k, **kwargs
            )
        return x, new_state

    return Layer(init, apply, "serial")


def parallel(*layers: Layer) -> Layer:
    """Apply layer i to element i of a tuple input; returns a tuple."""
    names = _keys(layers)

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
        shapes, params, state = [], {}, {}
        for name, layer, k, s in zip(
            names, layers, jax.random.split(key, len(layers)), input_shape
        ):
            out, params[name], state[name] = layer.init(k, s)
            shapes.append(out)
        return tuple(shapes), params, state

    def apply(params, state, xs, *, key=None, **kwargs):
        ys, new_state = [], {}
        for name, layer, k, x in zip(names, layers, _split_key(key, len(layers)), xs):
            y, new_state[name] = layer.apply(
                params[name], state[name], x, key=k, **kwargs
            )
            ys.append(y)
        return tuple(ys), new_state

    return Layer(init, apply, "parallel")


def FanOut(n: int) -> Layer:
    """Copy the input into an n-tuple."""

    def init(key, input_shape):
        del key
        return (input_shape,) * n, {}, {}

    def apply(params, state, x, **_):
        del params
        return (x,) * n, state

    return Layer(init, apply, "fanout")


def branches(*layers: Layer) -> Layer:
    """Feed the same input to every layer (the parallel branches of an Inception
    block); returns the tuple of their outputs. Follow with Concat() or Add()."""
    return serial(FanOut(len(layers)), parallel(*layers))


def Identity() -> Layer:
    """Return the input unchanged."""

    def init(key, input_shape):
        del key
        return input_shape, {}, {}

    def apply(params, state, x, **_):
        del params
        return x, state

    return Layer(init, apply, "identity")


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

    return Layer(init, apply, "add")


def residual(*block: Layer, shortcut: Layer | None = None) -> Layer:
    """`serial(*block)(x) + shortcut(x)`; the shortcut is the identity by default
    (pass e.g. a 1x1 Conv2D when the block changes the shape)."""
    return serial(
        branches(serial(*block), shortcut if shortcut is not None else Identity()),
        Add(),
    )


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

    return Layer(init, apply, "concat")


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

    return Layer(init, apply, "split")

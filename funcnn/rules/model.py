"""A model as the rules see it: a tree whose combinators list their `children`
as `(key, layer)` pairs and whose leaves carry a `LayerInfo` (the op they run and
the initializer of their weights).

The layer protocol itself (`funcnn.nn.core.Layer`) sits one level up and builds
on these two names; the rules need only the tree's shape, so they read it here
without importing the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple


class LayerInfo(NamedTuple):
    """What a leaf layer runs: the op (e.g. "conv2d") whose backward rule `grad=`
    picks, `w_init(key, shape, fan_in, dtype)`, which draws its weights (None
    for layers without), and the layout of its input ("NCHW" or "NHWC")."""

    op: str
    w_init: Callable | None = None
    layout: str = "NCHW"


def walk(layer: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Yields `("a/b", leaf)` for every leaf layer under `layer`, in forward order.

    A leaf at the root yields the path "" (it has no key).
    """
    if not layer.children:
        yield "/".join(path), layer
        return
    for key, child in layer.children:
        yield from walk(child, path + (key,))


def params_at(params: Any, path: str) -> Any:
    """The part of `params` (or grads) at the layer path "a/b" ("" is all)."""
    for part in path.split("/") if path else ():
        params = params[part]
    return params

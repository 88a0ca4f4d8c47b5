"""The layer protocol shared by every layer and combinator.

A layer is a `Layer(init, apply, name, children)`:

- `init(key, input_shape) -> (output_shape, params, state)` makes the parameters and
  predicts the output shape. Shapes include the batch axis, which may be -1.
- `apply(params, state, x, *, train=False, key=None, grad="custom", hook=None)
  -> (y, state)` maps the input to the output and returns the (possibly updated)
  state. Only these keywords are accepted; a misspelt one is a TypeError that
  names it, never a silently ignored option.

`state` holds what is not trained by gradients (BatchNorm running statistics); it is
an empty dict for layers without any. `key` is a PRNG key for layers that need
randomness (Dropout, in training). `grad` selects the backward rule of every conv,
pool and dense op inside (`funcnn.rules`): a name, a rule value, or a mapping from
layer paths to rules. `hook(path, layer, call, x) -> (y, state)` wraps every leaf
layer's computation: `call(x)` runs the layer and `path` is the tuple of keys from
the model's root to that layer. `funcnn.backward_trace` uses it to see each layer's
input, output and deltas; plain training passes None and pays nothing.

`children` lists a combinator's `(key, layer)` pairs, in order; leaves have none.
`info` names the op a leaf runs and the initializer of its weights (`LayerInfo`),
so that `funcnn.rules` can check a rule against the op and draw a layer's fixed
feedback weights the way the layer itself does; None for leaves without an op.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from funcnn.ops.init import he_normal as he_normal
from funcnn.rules.model import LayerInfo as LayerInfo
from funcnn.rules.model import walk as walk

Shape = tuple[int, ...]
APPLY_KEYWORDS = ("train", "key", "grad", "hook")
"""The only keywords a layer's `apply` takes; any other is a TypeError."""


class Layer(NamedTuple):
    """A layer: `init(key, input_shape)` and `apply(params, state, x, **kw)`.

    Attributes:
        init: `init(key, input_shape) -> (output_shape, params, state)`; shapes
            include the batch axis, which may be -1.
        apply: `apply(params, state, x, *, train=False, key=None,
            grad="custom", hook=None) -> (y, state)`.
        name: the short name in parameter keys, e.g. "conv" in "03_conv".
        children: a combinator's `(key, layer)` pairs in order; () for a leaf.
        info: a leaf's `LayerInfo` (its op and weight initializer), or None.
    """

    init: Callable[..., tuple[Any, Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    name: str
    children: tuple[tuple[str, Layer], ...] = ()
    info: LayerInfo | None = None


def check_keywords(label: str, kwargs: Mapping[str, Any]) -> None:
    """Raises a TypeError naming the first keyword not in `APPLY_KEYWORDS`."""
    for name in kwargs:
        if name in APPLY_KEYWORDS:
            continue
        close = difflib.get_close_matches(name, APPLY_KEYWORDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"{label}.apply: expected only the keywords "
            f"{', '.join(APPLY_KEYWORDS)}, got {name!r}.{hint}"
        )


def describe(tree: Any) -> str:
    """A short description of a params/state value for error messages."""
    if isinstance(tree, Mapping):
        return f"a dict with keys {sorted(map(str, tree))}"
    return f"a {type(tree).__name__}"


def check_params(label: str, params: Any, required: tuple[str, ...]) -> None:
    """Checks that `params` is a dict holding `required` keys (e.g. "w")."""
    if isinstance(params, Mapping) and all(k in params for k in required):
        return
    raise TypeError(
        f"{label}.apply: expected params with keys {list(required)}, got "
        f"{describe(params)}. Pass apply(params, state, x) in that order, with the "
        "params that init returned for this layer."
    )


def leaf(
    label: str,
    name: str,
    init: Callable,
    apply: Callable,
    *,
    param_keys: tuple[str, ...] = (),
    info: LayerInfo | None = None,
) -> Layer:
    """Builds a leaf layer whose `apply` checks its keywords and params, and runs
    the hook around the computation.

    Args:
      label: the factory's name, for messages (e.g. "Conv2D").
      name: the short name in parameter keys (e.g. "conv" -> "03_conv").
      init: `init(key, input_shape) -> (output_shape, params, state)`.
      apply: `apply(params, state, x, *, train, key, grad) -> (y, state)`.
      param_keys: keys `params` must hold (e.g. ("w",)).
      info: the op the layer runs and its weight initializer, for `funcnn.rules`.
    """

    def checked_apply(params, state, x, **kwargs):
        check_keywords(label, kwargs)
        if param_keys:
            check_params(label, params, param_keys)
        hook = kwargs.pop("hook", None)
        if hook is None:
            return apply(params, state, x, **kwargs)
        return hook((), layer, lambda x: apply(params, state, x, **kwargs), x)

    layer = Layer(init, checked_apply, name, info=info)
    return layer


def prefixed(hook: Callable | None, name: str) -> Callable | None:
    """`hook` as seen from inside the child `name`: paths gain `name` in front."""
    if hook is None:
        return None

    def child_hook(path, layer, call, x):
        return hook((name,) + path, layer, call, x)

    return child_hook


def leaf_paths(layer: Layer) -> list[str]:
    """The key paths of every leaf layer under `layer`, e.g. `["00_conv", ...]`."""
    return [path for path, _ in walk(layer)]


def check_shape(name: str, shape, rank: int, axes: str) -> Shape:
    if not isinstance(shape, tuple) or len(shape) != rank:
        raise ValueError(
            f"{name}: expected an input shape of rank {rank} {axes}, got {shape!r}."
        )
    return shape


def positive_int(name: str, arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected {arg} to be a positive int, got {value!r}.")
    return value

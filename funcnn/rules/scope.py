"""Which backward rule each layer of a model uses: `grad=` as a name, a rule value,
or a mapping from layer paths to rules.

A layer path is the layer's key path in `params`, nested keys joined by "/", e.g.
`"03_conv"` or `"05_residual/00_conv"`. A mapping's keys are such paths or glob
patterns over them (`fnmatch`: `*`, `?`, `[seq]`); `"*"` is the default. For each
layer the most specific matching key wins: a key without wildcards beats every
pattern, and among patterns the one with more literal characters wins (ties go to
the key listed first).

Combinators carry the path down: `scope(grad, "03_conv")` turns any `grad` into a
`Scoped` value that knows the child's path (a plain name or rule becomes the table
`{"*": rule}`), and a leaf layer asks `pick(grad)` for its own rule and
`path_of(grad)` for its own path. All of this happens while tracing; the compiled
step is the same as with the plain rule.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

_GLOB = frozenset("*?[")


class Scoped(NamedTuple):
    """A grad mapping seen from one layer path. Hashable: `table` is a tuple.

    Attributes:
        table: the `(key, rule)` pairs of the mapping, in the user's order.
        path: the layer names from the model's root to this layer.
    """

    table: tuple[tuple[str, Any], ...]  # (key, rule) pairs in the user's order
    path: tuple[str, ...]  # names from the model's root to this layer

    @property
    def path_str(self) -> str:
        return "/".join(self.path)


def is_mapping(grad: Any) -> bool:
    return isinstance(grad, (Mapping, Scoped))


def mapping_table(func: str, grad: Mapping) -> tuple[tuple[str, Any], ...]:
    if not grad:
        raise ValueError(
            f"{func}: expected a non-empty mapping from layer paths to rules, got "
            '{}. Give at least a default, e.g. {"*": "custom"}.'
        )
    for key in grad:
        if not isinstance(key, str) or not key:
            raise TypeError(
                f"{func}: expected layer paths or glob patterns (non-empty str) as "
                f"mapping keys, got {key!r}."
            )
    return tuple(grad.items())


def scope(grad: Any, name: str) -> Scoped:
    """`grad` as the child layer `name` sees it, with its path from the root."""
    if isinstance(grad, Scoped):
        return Scoped(grad.table, grad.path + (name,))
    if isinstance(grad, Mapping):
        return Scoped(mapping_table("grad", grad), (name,))
    return Scoped((("*", grad),), (name,))


def scoped_at(grad: Any, path: str) -> Any:
    """`grad` as the layer at `path` ("a/b", "" for the root) sees it."""
    for part in path.split("/") if path else ():
        grad = scope(grad, part)
    return grad


def path_of(grad: Any) -> str:
    """The layer path `grad` was scoped to ("" outside any combinator)."""
    return grad.path_str if isinstance(grad, Scoped) else ""


def _specificity(key: str) -> tuple[int, int]:
    literal = sum(c not in _GLOB for c in key)
    return (0 if _GLOB & set(key) else 1, literal)


def match(table: Iterable[tuple[str, Any]], path: str) -> tuple[str, Any] | None:
    """The (key, rule) of the most specific key matching `path`, or None."""
    best, best_rank = None, None
    for key, rule in table:
        if not fnmatch.fnmatchcase(path, key):
            continue
        rank = _specificity(key)
        if best_rank is None or rank > best_rank:
            best, best_rank = (key, rule), rank
    return best


def pick(grad: Any, *, layer: str = "layer") -> Any:
    """The rule (name or value) that applies at the path `grad` was scoped to.

    Raises:
        ValueError: if no key of the mapping matches this layer's path.
    """
    if not is_mapping(grad):
        return grad
    scoped = (
        grad if isinstance(grad, Scoped) else Scoped(mapping_table("grad", grad), ())
    )
    found = match(scoped.table, scoped.path_str)
    if found is None:
        keys = [k for k, _ in scoped.table]
        raise ValueError(
            f"{layer}: expected a grad mapping key that matches the layer path "
            f"{scoped.path_str!r}, got keys {keys}. Add a default, e.g. "
            '{..., "*": "custom"}.'
        )
    return found[1]


def check_patterns(grad: Any, paths: Iterable[str], *, func: str) -> None:
    """Raises a ValueError naming every mapping key that matches none of `paths`.

    Args:
        grad: the user's `grad=` value; only a mapping is checked.
        paths: the model's leaf-layer paths, e.g. from `funcnn.nn.leaf_paths`.
        func: the caller, for the message.
    """
    if not isinstance(grad, Mapping):
        return
    table = mapping_table(func, grad)
    paths = list(paths)
    unused = [k for k, _ in table if not any(fnmatch.fnmatchcase(p, k) for p in paths)]
    if unused:
        shown = paths[:12] + (["..."] if len(paths) > 12 else [])
        raise ValueError(
            f"{func}: expected every grad mapping key to match a layer path, got "
            f"{unused} matching none. The model's layer paths are {shown}."
        )

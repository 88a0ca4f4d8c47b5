"""Rules in a model: the rule each layer runs, checked against its op, and the
feedback weights each layer uses.

A leaf layer calls `layer_rule(grad, layer=..., info=..., w=...)` to turn the
`grad` its combinators scoped to its path into what its op runs;
`feedback_weights` and `check_model` walk the model and make the same call per
layer, so what they report is what the layers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from funcnn.ops import registry
from funcnn.ops.rule import unsupported
from funcnn.rules.model import walk
from funcnn.rules.scope import check_patterns, mapping_table, path_of, pick, scope


def layer_rule(grad: Any, *, layer: str, info: Any, w=None) -> Any:
    """The rule the leaf layer that `grad` was scoped to runs.

    Args:
      grad: the `grad=` value the layer received (a name, a rule value, a
        mapping, or a `Scoped` value from its combinators).
      layer: the layer's label for messages, e.g. "Conv2D".
      info: the layer's `funcnn.nn.core.LayerInfo` (its op and w_init).
      w: the layer's weights, or None for layers without.

    Returns:
      "custom", "autodiff", or a rule value prepared for this layer (feedback
      alignment with the layer's own B drawn from its path).
    """
    rule = registry.lookup(layer, pick(grad, layer=layer))
    if isinstance(rule, str):
        return rule
    return rule.prepare(info.op, w, path_of(grad), info.w_init)


def _scoped_at(grad: Any, path: str) -> Any:
    if not path:
        return grad
    for part in path.split("/"):
        grad = scope(grad, part)
    return grad


def _params_at(params: Any, path: str) -> Any:
    for part in path.split("/") if path else ():
        params = params[part]
    return params


def check_model(func: str, model: Any, grad: Any) -> None:
    """Checks that every mapping key matches a layer and that each layer's rule
    supports the layer's op, before anything is traced.

    Raises:
      ValueError: naming `func`, the layer path, the op and the rule.
    """
    leaves = list(walk(model))
    check_patterns(grad, [path for path, _ in leaves], func=func)
    for path, leaf in leaves:
        info = getattr(leaf, "info", None)
        if info is None:
            continue
        scoped = _scoped_at(grad, path)
        rule = registry.lookup(func, pick(scoped, layer=func))
        if isinstance(rule, str) or info.op in rule.ops:
            continue
        try:
            rule.for_op(info.op)
        except ValueError:
            where = f" at layer {path!r}"
            raise ValueError(unsupported(info.op, rule, where, func)) from None


def feedback_weights(model: Any, params: Any, grad: Any) -> dict[str, Any]:
    """The weights B each conv and dense layer's input delta flows through.

    Args:
      model: the `Layer`.
      params: its parameters (B does not depend on them for feedback alignment;
        sign symmetry's B is sign(W) of these).
      grad: a rule name, value or mapping, as given to `model.apply`.

    Returns:
      `{layer path: B}` for every layer whose rule rewrites its op; B has the
      shape of that layer's w. Layers under "custom" or "autodiff" (B = W) are
      left out.
    """
    check_model("rules.feedback_weights", model, grad)
    out = {}
    for path, leaf in walk(model):
        info = getattr(leaf, "info", None)
        if info is None or info.w_init is None:
            continue
        w = _params_at(params, path)["w"]
        rule = layer_rule(_scoped_at(grad, path), layer=leaf.name, info=info, w=w)
        if isinstance(rule, str) or info.op not in rule.ops:
            continue
        out[path] = rule.prepare(info.op, w).backward_weight(w)
    return out


def validate(func: str, grad: Any, *, model: Any = None) -> Any:
    """Checks a `grad=` value eagerly: a rule name ("custom", "autodiff",
    "feedback_alignment", "sign_symmetry" or a registered one), a rule value, or a
    non-empty mapping from layer paths to those. With `model`, also checks that
    every mapping key matches a layer and every layer's rule supports its op.
    Returns `grad` unchanged.

    Raises:
        ValueError, TypeError: naming `func`, what was expected and what was given.
    """
    values = mapping_table(func, grad) if isinstance(grad, Mapping) else (("", grad),)
    for key, rule in values:
        registry.lookup(func, rule, f" at key {key!r}" if key else "")
    if model is not None and hasattr(model, "children"):
        check_model(func, model, grad)
    return grad

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

import jax
import jax.numpy as jnp

from funcnn.ops import registry
from funcnn.ops.rule import unsupported
from funcnn.rules import dfa
from funcnn.rules.model import params_at, walk
from funcnn.rules.scope import check_patterns, mapping_table, path_of, pick, scoped_at


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
        scoped = scoped_at(grad, path)
        rule = registry.lookup(func, pick(scoped, layer=func))
        if isinstance(rule, str) or info.op in rule.ops:
            continue
        try:
            rule.for_op(info.op)
        except ValueError:
            where = f" at layer {path!r}"
            raise ValueError(unsupported(info.op, rule, where, func)) from None


def bind(grad: Any, *, step: Any = None, feedback: Any = None) -> Any:
    """`grad` for one train step: every rule in it (by name or value, alone or
    in a mapping) replaced by `rule.bind(step=step, feedback=feedback)`, so that
    brSF draws the step's B and Kolen-Pollack reads the state's B. Names of
    rules that do not change stay names."""

    def one(value):
        rule = registry.lookup("bind", value)
        if isinstance(rule, str):
            return value
        bound = rule.bind(step=step, feedback=feedback)
        return value if bound is rule else bound

    if isinstance(grad, Mapping):
        return {key: one(value) for key, value in grad.items()}
    return one(grad)


def _layer_inputs(model: Any, params: Any, input_shape) -> tuple[Any, dict]:
    """The output and every leaf's input, as shapes, for a batch of `input_shape`
    (its batch size may be -1), from an abstract pass."""
    shape = (1, *tuple(input_shape)[1:]) if input_shape[0] == -1 else input_shape
    dtype = jax.tree_util.tree_leaves(params)[0].dtype

    def run(p):
        _, _, state = model.init(jax.random.PRNGKey(0), tuple(shape))
        seen = {}

        def hook(keys, leaf, call, x):
            seen["/".join(keys)] = x
            return call(x)

        y, _ = model.apply(p, state, jnp.zeros(shape, dtype), hook=hook)
        return y, seen

    return jax.eval_shape(run, params)


def feedback_weights(
    model: Any,
    params: Any,
    grad: Any,
    *,
    step: Any = None,
    feedback: Any = None,
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The weights B each conv and dense layer's input delta flows through.

    Args:
      model: the `Layer`.
      params: its parameters, or a train state (anything with `params`, `step`
        and `feedback` fields), whose step and learned B are then used. B does
        not depend on the params for feedback alignment, frSF's |B| neither;
        the sign rules take sign(W) of these.
      grad: a rule name, value or mapping, as given to `model.apply`.
      step: brSF draws the B of this step (default: the state's, else 0).
      feedback: Kolen-Pollack's `{path: B}` (default: the state's, else each
        layer's initial B).
      input_shape: the model's input shape, needed only for direct feedback
        alignment, whose B depends on each layer's input size.

    Returns:
      `{layer path: B}` for every layer whose rule rewrites its op. B has the
      shape of the layer's w, except under direct feedback alignment, where it
      is the projection `(E, *x.shape[1:])` from the E network outputs to the
      layer's input. Layers under "custom" or "autodiff" (B = W) are left out.

    Raises:
      ValueError: for a rule a layer does not support, or a direct feedback
        alignment layer without `input_shape`.
    """
    func = "rules.feedback_weights"
    if hasattr(params, "params") and hasattr(params, "feedback"):
        state = params
        params = state.params
        step = state.step if step is None else step
        feedback = state.feedback if feedback is None else feedback
    grad = bind(grad, step=step, feedback=feedback)
    check_model(func, model, grad)
    taps = (
        dfa.output_error_layers(func, model, grad)
        if dfa.uses_output_error(grad)
        else {}
    )
    if taps and input_shape is None:
        raise ValueError(
            f"{func}: expected input_shape= for {dfa.FUNC}, got None. Its B at a "
            "layer maps the network's outputs to that layer's input, e.g. pass "
            "input_shape=(-1, 1, 28, 28)."
        )
    out = {}
    if taps:
        y, inputs = _layer_inputs(model, params, input_shape)
        size = int(y.size // y.shape[0])
        for path, (rule, layout) in taps.items():
            x = inputs[path]
            out[path] = rule.projection(path, x.shape, x.dtype, size, layout)
    out.update(weight_feedback(model, params, grad))
    return {path: out[path] for path, _ in walk(model) if path in out}


def weight_feedback(model: Any, params: Any, grad: Any) -> dict[str, Any]:
    """`{path: B}` for every layer whose rule sends its input delta through a B
    of w's shape: `feedback_weights` without direct feedback alignment's
    projections. `grad` is taken as it is (bind it first for brSF and
    Kolen-Pollack)."""
    out = {}
    for path, leaf in walk(model):
        info = getattr(leaf, "info", None)
        if info is None or info.w_init is None:
            continue
        w = params_at(params, path)["w"]
        scoped = scoped_at(grad, path)
        picked = registry.lookup(
            "rules.feedback_weights", pick(scoped, layer=leaf.name)
        )
        if isinstance(picked, str) or picked.output_error:
            continue
        rule = layer_rule(scoped, layer=leaf.name, info=info, w=w)
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
        if dfa.uses_output_error(grad):
            dfa.output_error_layers(func, model, grad)
    return grad

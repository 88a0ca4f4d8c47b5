"""Rule names: the registry behind `grad="<name>"`, and how an op resolves its
`grad=` argument.

"custom" and "autodiff" are funcnn's own two modes; any other name is looked up
here (`register` adds one), and a rule value is asked `rule.for_op(op)`, which is
the rule itself, "custom" (a weight-free op keeps its exact rule) or an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from funcnn.ops.rule import Rule, StepRule, _flatten

BUILTIN = ("custom", "autodiff")


_REGISTRY: dict[str, Rule] = {}


_LIBRARY_NAMES: list[str] = []  # registered by funcnn itself, listed in messages

_STEP_RULES: dict[str, StepRule] = {}  # names of whole-step rules (forward_gradient)


def names() -> tuple[str, ...]:
    """The names "custom", "autodiff" and those funcnn registers, in order."""
    return BUILTIN + tuple(_LIBRARY_NAMES)


def step_names() -> tuple[str, ...]:
    """The names of the registered whole-step rules (e.g. "forward_gradient"),
    which only `make_train_step` takes."""
    return tuple(_STEP_RULES)


def check_static(func: str, rule: Rule) -> None:
    """Raises a TypeError if a field outside `array_fields` is not hashable."""
    for name, value in _flatten(rule)[1]:
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"{func}: expected hashable config fields in {type(rule).__name__}, "
                f"got an unhashable {type(value).__name__} in field {name!r}. List "
                "array fields in the class's array_fields; make others tuples."
            ) from None


def lookup(func: str, grad: Any, where: str = "") -> Rule | str:
    """A rule name or value as "custom", "autodiff" or a `Rule` value.

    Raises:
      ValueError, TypeError: for an unknown name, a whole-step rule
        (`StepRule`, e.g. "forward_gradient") or anything else.
    """
    if step_rule(grad) is not None:
        raise ValueError(
            f"{func}: expected grad{where} to be a rule for each op, got {grad!r}, "
            "which replaces the whole backward pass of a train step. Pass it alone "
            "to make_train_step(grad=...); ops, layers, model.apply, "
            "backward_trace and grad mappings take per-op rules such as 'custom'."
        )
    if isinstance(grad, str):
        if grad in BUILTIN:
            return grad
        if grad in _REGISTRY:
            return _REGISTRY[grad]
    elif isinstance(grad, Rule):
        check_static(func, grad)
        return grad
    hint = (
        ' Use grad="custom" for the hand-written backward rule or grad="autodiff" '
        "for jax.grad of the plain forward."
    )
    close = []
    if isinstance(grad, str):
        close = difflib.get_close_matches(grad, BUILTIN + tuple(_REGISTRY), n=1)
    if close:
        hint = f" Did you mean {close[0]!r}?"
    elif isinstance(grad, Mapping) or type(grad).__name__ == "Scoped":
        hint = (
            " A mapping from layer paths to rules applies to a model (model.apply, "
            "make_train_step); an op takes one rule."
        )
    elif isinstance(grad, type) and issubclass(grad, Rule):
        hint = f" Pass an instance: {grad.__name__}()."
    raise ValueError(
        f"{func}: expected grad{where} to be one of {names()}, a name given to "
        f"funcnn.rules.register or a funcnn.rules.Rule value, got {grad!r}.{hint}"
    )


def resolve(op: str, grad: Any) -> Rule | str:
    """What an op runs for `grad`: "custom", "autodiff" or a Rule value."""
    found = lookup(op, grad)
    return found if isinstance(found, str) else found.for_op(op)


def register(name: str, rule: Rule, *, overwrite: bool = False) -> Rule:
    """Makes `rule` usable by `name` wherever `grad=` takes a rule. Returns it.

    Raises:
      ValueError: for "custom"/"autodiff", or a name already taken by another
        rule (pass overwrite=True to replace it).
      TypeError: if `rule` is not a Rule value.
    """
    func = "rules.register"
    if not isinstance(name, str) or not name:
        raise TypeError(f"{func}: expected a non-empty str name, got {name!r}.")
    if name in BUILTIN:
        raise ValueError(
            f"{func}: expected a name other than {BUILTIN}, got {name!r}. Those "
            "two name funcnn's own exact rules."
        )
    if not isinstance(rule, Rule):
        hint = " Pass an instance, e.g. MyRule()." if isinstance(rule, type) else ""
        raise TypeError(
            f"{func}: expected a funcnn.rules.Rule value, got {rule!r}.{hint}"
        )
    check_static(func, rule)
    old = _REGISTRY.get(name)
    if old is not None and old is not rule and not overwrite:
        raise ValueError(
            f"{func}: expected a new name, got {name!r}, which already names "
            f"{old!r}. Pass overwrite=True to replace it."
        )
    _REGISTRY[name] = rule
    return rule


def register_library(name: str, rule: Rule) -> Rule:
    """`register` for the rules funcnn itself ships: they are listed in messages."""
    register(name, rule)
    if name not in _LIBRARY_NAMES:
        _LIBRARY_NAMES.append(name)
    return rule


def registered() -> dict[str, Rule]:
    """A copy of the name -> rule registry."""
    return dict(_REGISTRY)


def check_grad_mode(op: str, grad: Any) -> Any:
    """Resolves `grad=`: "custom" or "autodiff" as they are, a rule name or value
    (see `funcnn.rules`) as what `op` runs under it: "custom" where the rule keeps
    the op's exact rule, else the rule value. Raises naming `op` otherwise."""
    if isinstance(grad, str) and grad in BUILTIN:
        return grad
    return resolve(op, grad)


def register_step_rule(rule: StepRule) -> StepRule:
    """Makes the whole-step rule `rule` usable as `grad=rule.name` in
    `make_train_step` (funcnn's own: "forward_gradient"). Returns it."""
    if not isinstance(rule, StepRule) or not rule.name or rule.name in BUILTIN:
        raise TypeError(
            f"rules.register_step_rule: expected a StepRule value with a new name, "
            f"got {rule!r}."
        )
    _STEP_RULES[rule.name] = rule
    return rule


def step_rule(grad: Any) -> StepRule | None:
    """The whole-step rule `grad` names or is, else None (a per-op rule, a
    mapping or anything else)."""
    if isinstance(grad, StepRule):
        return grad
    if isinstance(grad, str):
        return _STEP_RULES.get(grad)
    return None

"""The scalar objectives `funcnn.gradcheck` differentiates, built in float64.

An op or a layer is checked through `vdot(output, g)` with a seeded random
cotangent `g` (unlike `.sum()`, it weights every output position differently); a
model (a layer given labels) through its loss. Each builder returns
`(objective(diff, mode), diff, leaf names, default title, objective text)`, where
`diff` is the pytree of float64 arrays that is differentiated and `mode` is the
grad mode ("custom" or "autodiff") the target is called with.
"""

from __future__ import annotations

import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.training.losses import softmax_cross_entropy


def enable_x64():
    """`jax.enable_x64(True)`, or the experimental spelling of older JAX versions."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    # Older JAX versions only: here, since newer ones no longer have it.
    from jax.experimental import enable_x64  # type: ignore[attr-defined]

    return enable_x64()


def _is_float_array(a) -> bool:
    return isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(
        a.dtype, jnp.floating
    )


def to64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if _is_float_array(a) else a, tree
    )


def _leaf_names(prefix: str, tree) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [prefix + jax.tree_util.keystr(path) for path, _ in paths]


def _random_cotangent(shapes, seed):
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    return treedef.unflatten(
        [jax.random.normal(k, s.shape, jnp.float64) for k, s in zip(keys, leaves)]
    )


def _vdot(out, cot):
    terms = jax.tree_util.tree_map(lambda o, g: jnp.vdot(o, g), out, cot)
    return sum(jax.tree_util.tree_leaves(terms))


def op_objective(target, args, kwargs, seed):
    label = getattr(target, "__name__", type(target).__name__)
    if not callable(target):
        raise TypeError(
            f"gradcheck: expected an op (a callable taking grad=) or a Layer, got "
            f"{label}."
        )
    sig = None
    with contextlib.suppress(TypeError, ValueError):
        sig = inspect.signature(target)
    params = list(sig.parameters.values()) if sig else []
    if sig and not any(p.name == "grad" or p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(
            f"gradcheck: expected an op that takes a grad= keyword, got {label}{sig}. "
            "Wrap a plain function so that it takes one: lambda x, *, grad: f(x)."
        )
    names = [
        p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    slots = [i for i, a in enumerate(args) if _is_float_array(a)]
    if not slots:
        raise ValueError(
            "gradcheck: expected a floating-point array argument to differentiate, "
            f"got argument types {[type(a).__name__ for a in args]}."
        )
    diff = {i: jnp.asarray(args[i], jnp.float64) for i in slots}
    leaf_names = [names[i] if i < len(names) else f"args[{i}]" for i in slots]

    def call(d, mode):
        full = [d.get(i, a) for i, a in enumerate(args)]
        return target(*full, grad=mode, **(kwargs or {}))

    cot = _random_cotangent(jax.eval_shape(lambda d: call(d, "custom"), diff), seed)

    def objective(d, mode):
        return _vdot(call(d, mode), cot)

    return objective, diff, leaf_names, label, "vdot(output, random g)"


def layer_objective(layer, args, input_shape, params, state, labels, loss, train, seed):
    if len(args) > 1:
        raise TypeError(
            f"gradcheck: expected at most one input x for a Layer, got {len(args)} "
            "positional arguments."
        )
    key_init, key_x, key_apply = jax.random.split(jax.random.key(seed), 3)
    if args:
        x = to64(args[0])
    elif input_shape is not None:
        shape = tuple(2 if d == -1 else d for d in input_shape)
        x = jax.random.normal(key_x, shape, jnp.float64)
    else:
        raise ValueError(
            "gradcheck: expected an input x or input_shape= for a Layer, got "
            "neither. Pass e.g. gradcheck(layer, x) or input_shape=(2, 1, 8, 8)."
        )
    if params is None or state is None:
        shapes = jax.tree_util.tree_map(lambda a: a.shape, x)
        _, init_params, init_state = layer.init(key_init, shapes)
        params = init_params if params is None else params
        state = init_state if state is None else state
    state = to64(state)
    diff = {"params": to64(params), "x": x}
    names = _leaf_names("params", diff["params"]) + _leaf_names("x", x)
    apply_key = key_apply if train else None

    def forward(d, mode):
        kw = dict(train=train, key=apply_key, grad=mode)
        return layer.apply(d["params"], state, d["x"], **kw)[0]

    if labels is None and loss is not None:
        raise ValueError("gradcheck: expected labels= with loss=, got labels=None.")
    if labels is not None:
        loss_fn = softmax_cross_entropy if loss is None else loss
        targets = to64(jnp.asarray(labels))
        what = f"{getattr(loss_fn, '__name__', 'loss')}(model(x), labels)"
        title = f"{layer.name} model"
    else:
        loss_fn = _vdot
        targets = _random_cotangent(
            jax.eval_shape(lambda d: forward(d, "custom"), diff), seed
        )
        what, title = "vdot(layer(params, x), random g)", f"{layer.name} layer"

    def objective(d, mode):
        return loss_fn(forward(d, mode), targets)

    return objective, diff, names, title, what + (", train=True" if train else "")

"""The network's output error, routed to the layers that learn from it (direct
feedback alignment, `funcnn.rules.direct_feedback_alignment`), in one backward
pass.

The outermost combinator that receives such a rule calls `apply` here instead of
running its children directly. It runs the model once with:
- every layer under the rule set to its exact op ("custom");
- a hook that passes each such layer's input through `funcnn.rules.dfa.tap`
  together with a zero "carrier" shaped like the model's output;
- the taps' carrier outputs added to the model's output.

The forward values are unchanged (the taps are identities, the carriers zeros).
In the backward pass the loss fills every carrier with e = dL/d(output), and each
tap replaces its layer's input delta by `e @ B`: one backward pass, whose unused
exact input deltas XLA removes. Any hook the caller passes (the probes of
`funcnn.backward_trace`, `layer_stats`, `alignment`) wraps the tap, so the delta
it sees at a layer's input is the projection that the layer below receives.

The output's shape comes from an abstract evaluation of the model
(`jax.eval_shape`), which costs tracing time only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from funcnn.rules import dfa


def apply(layer: Any, params, state, x, kwargs: dict) -> tuple[Any, Any]:
    """`layer.apply(params, state, x, **kwargs)` with the output error routed to
    the layers whose rule needs it (see the module doc).

    Raises:
      ValueError: when no conv2d or dense layer is under such a rule, or the
        model's output is not one array.
    """
    grad = kwargs.get("grad", "custom")
    taps = dfa.output_error_layers(layer.name, layer, grad)
    plain = dict(kwargs, grad=dfa.without_output_error(grad))

    def run(p, s, xx):
        return layer.apply(p, s, xx, **dict(plain, hook=None))[0]

    out = jax.eval_shape(run, params, state, x)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            f"{layer.name}: expected a model whose output is one array for "
            f"{dfa.FUNC}, got {jax.tree_util.tree_structure(out)}. The rule "
            "projects the error of a single output."
        )
    carrier = jnp.zeros(out.shape, out.dtype)
    size = int(out.size // out.shape[0]) if out.shape else 1
    inner = kwargs.get("hook")
    parts = []

    def hook(keys, leaf, call, xx):
        path = "/".join(keys)
        if path in taps:
            rule, layout = taps[path]

            def tapped(xi, call=call):
                proj = rule.projection(path, xi.shape, xi.dtype, size, layout)
                xi, part = dfa.tap(xi, carrier, proj, rule.clip)
                parts.append(part)
                return call(xi)

            run_leaf = tapped
        else:
            run_leaf = call
        return run_leaf(xx) if inner is None else inner(keys, leaf, run_leaf, xx)

    y, new_state = layer.apply(params, state, x, **dict(plain, hook=hook))
    for part in parts:
        y = y + part
    return y, new_state

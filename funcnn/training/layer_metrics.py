"""Per-layer metrics a train step can log: the angles between a rule's backward
and the exact one, from probed backward passes (`funcnn.nn.probe`), and how far
each layer's feedback weights B are from its weights W.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.nn import probe
from funcnn.rules.angles import angle
from funcnn.rules.layers import weight_feedback
from funcnn.rules.model import params_at


def alignment_metrics(specs, res, exact) -> dict[str, jax.Array]:
    """ "align_grad/<path>" and "align_delta/<path>" in degrees, float32 scalars.

    Args:
      specs: the leaf layers, from `funcnn.nn.probe.leaf_specs`.
      res, exact: `funcnn.nn.probe.value_and_grad_with_probes` results under the
        measured rule and under the exact one, both with input probes, on the same
        batch, key and params.

    Only layers with parameters are measured.
    """
    angles = {}
    for spec in specs:
        grads = probe.subtree(res.grads, spec.keys)
        if not jax.tree_util.tree_leaves(grads):
            continue
        exact_grads = probe.subtree(exact.grads, spec.keys)
        angles[f"align_grad/{spec.path}"] = angle(grads, exact_grads).astype(
            jnp.float32
        )
        angles[f"align_delta/{spec.path}"] = angle(
            res.delta_in[spec.path], exact.delta_in[spec.path]
        ).astype(jnp.float32)
    return angles


def weight_metrics(model, params, grad) -> dict[str, jax.Array]:
    """ "align_weight/<path>" (degrees between W and B) and "norm_ratio/<path>"
    (`|B| / |W|`), float32 scalars, for every layer whose rule sends its delta
    through a B of w's shape (`rules.layers.weight_feedback`).

    Args:
      model: the `Layer`; params: its params; grad: the bound rules of the step.
    """
    out = {}
    for path, b in weight_feedback(model, params, grad).items():
        w = params_at(params, path)["w"]
        out[f"align_weight/{path}"] = angle(w, b).astype(jnp.float32)
        ratio = jnp.linalg.norm(b.astype(jnp.float32)) / jnp.linalg.norm(
            w.astype(jnp.float32)
        )
        out[f"norm_ratio/{path}"] = ratio
    return out

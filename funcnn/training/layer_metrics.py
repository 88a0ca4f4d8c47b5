"""Per-layer metrics a train step can log, from one probed backward pass
(`funcnn.nn.probe`): the angles between a rule's backward and the exact one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.nn import probe
from funcnn.rules.angles import angle


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

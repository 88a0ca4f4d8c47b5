"""How far a rule's gradient is from the true one, layer by layer.

For each leaf layer with parameters, two angles in degrees between the rule's
backward pass and the exact one ("custom") on the same batch and forward:
- "grad": between the layer's parameter gradients (all its params as one vector);
- "delta": between the deltas at the layer's input, dLoss/d(input).

The input deltas come from zero probes at every leaf layer's input
(`funcnn.nn.probe`, the mechanism behind `funcnn.backward_trace`): the loss is
differentiated with respect to zeros added there (Flax's "perturb" idea, with no
layer edited). 0 degrees means the same
direction, under 90 means the rule's update still descends (Lillicrap et al.);
`funcnn.rules.angle` computes it.

`make_train_step(alignment=True)` logs the same angles at every step
(`funcnn.training.layer_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax

from funcnn import rules
from funcnn.nn import probe
from funcnn.training.layer_metrics import alignment_metrics
from funcnn.training.losses import loss_fn


class LayerAlignment(NamedTuple):
    """Angles in degrees between a rule's backward and the exact one at a layer.

    Attributes:
        grad: the layer's parameter gradient (all its params as one vector)
            against the exact parameter gradient.
        delta: the delta at the layer's input, dL/d(input), against the exact one.
    """

    grad: float  # parameter gradient vs the exact parameter gradient
    delta: float  # delta at the layer's input vs the exact one


def alignment(
    model,
    params,
    state,
    batch,
    *,
    grad: Any,
    loss: str | Callable = "cross_entropy",
    label_smoothing: float = 0.0,
    train: bool = True,
    key=None,
    exact: Any = "custom",
) -> dict[str, LayerAlignment]:
    """Per layer with parameters, the angles between `grad`'s backward and the
    exact one on one batch.

    Args:
      model: the `Layer`.
      params: its params.
      state: its model state.
      batch: `(x, y)`: inputs, e.g. `(N, C, H, W)`, and int labels `(N,)`.
      grad: the rule to measure: a name, a value or a mapping (as `model.apply`).
      loss: as in `make_train_step`.
      label_smoothing: as in `make_train_step`.
      train: run the model in training mode (BatchNorm batch statistics,
        Dropout with `key`, by default `PRNGKey(0)`), as a train step does.
      exact: the reference rule.

    Returns:
      `{layer path: LayerAlignment(grad=degrees, delta=degrees)}` in forward
      order. `grad="custom"` against itself gives 0 everywhere.
    """
    rules.validate("alignment", grad, model=model)
    rules.validate("alignment", exact, model=model)
    loss_of = loss_fn(loss, label_smoothing)
    if train and key is None:
        key = jax.random.PRNGKey(0)
    x, y = batch

    def objective(params, hook=None, rule=grad):
        out, _ = model.apply(
            params, state, x, train=train, key=key, grad=rule, hook=hook
        )
        return loss_of(out, y), None

    def measure(params):
        specs = probe.leaf_specs(objective, params)
        res = probe.value_and_grad_with_probes(objective, params, specs)
        ref = probe.value_and_grad_with_probes(
            partial(objective, rule=exact), params, specs
        )
        return alignment_metrics(specs, res, ref)

    angles = jax.device_get(jax.jit(measure)(params))
    paths = [name.split("/", 1)[1] for name in angles if name.startswith("align_grad/")]
    return {
        path: LayerAlignment(
            float(angles[f"align_grad/{path}"]), float(angles[f"align_delta/{path}"])
        )
        for path in paths
    }

"""Forward gradients (Baydin et al. 2022, "Gradients without backpropagation"):
a train-step rule that runs no backward pass at all.

Each step draws directions v ~ N(0, I) over all parameters and takes the
directional derivative `dL . v` of the loss from one forward-mode pass
(`jax.jvp`); `(dL . v) v` is an unbiased estimate of the gradient, since
`E[v v^T] = I`. With `directions=K` it averages K such estimates, from K tangents
carried through one forward pass. `funcnn.training.forward_grad` computes it;
`make_train_step(grad=forward_gradient())` (or `grad="forward_gradient"`) runs it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from funcnn.ops.registry import register_step_rule
from funcnn.ops.rule import StepRule


@dataclasses.dataclass(frozen=True)
class ForwardGradient(StepRule):
    """The forward-gradient step rule.

    Fields:
      directions: K, the number of random directions averaged per step (>= 1).
        The estimate's variance falls as 1/K; its cost is one forward pass
        carrying K tangents.
    """

    directions: int = 1

    name: ClassVar[str] = "forward_gradient"

    def __post_init__(self):
        k = self.directions
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"forward_gradient: expected directions to be an int >= 1, got {k!r}."
            )


def forward_gradient(directions: int = 1) -> ForwardGradient:
    """The forward-gradient rule for `make_train_step(grad=...)`; also
    `grad="forward_gradient"` (one direction).

    Args:
      directions: K random directions averaged per step.
    """
    return ForwardGradient(directions=directions)


register_step_rule(ForwardGradient())

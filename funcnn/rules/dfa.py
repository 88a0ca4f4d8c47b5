"""Direct feedback alignment (Nøkland 2016): each layer learns from a fixed random
projection of the network's output error, not from the delta of the layer above.

Which delta is replaced. As in BioTorch (`layers/dfa`), a DFA layer's *input*
delta, the delta it would send to the layer below, is replaced by `e @ B`, with
e = dL/d(network output) flattened to `(N, E)` and B of shape `(E, *x.shape[1:])`.
The layer below then receives that projection through whatever sits between
(its activation's derivative, a pool's routing), which is Nøkland's
`(B e) ⊙ f'(a)`, and computes its exact parameter gradients from it. So every
conv2d and dense layer but the network's last is taught by a projection of e
alone, and the last one, whose output delta is e itself (through any pool or
flatten after it), by its exact gradient. A layer's delta depends on the layers
between it and the output only through e (and the forward activations).

The projection's shape: Nøkland's dense one, one fixed B per layer mapping the E
outputs to every input unit of the layer, `(E, C, H, W)` for a conv in NCHW
(drawn in NCHW order and transposed for NHWC, so both layouts train alike),
`(E, F)` for dense. A layer's B holds E times the size of one input example:
for LeNet-5 at 28x28 with E = 10, 25,640 numbers over its five layers (100 KB
in float32); for ResNet-20 on CIFAR-10, 1,874,560 (7.5 MB). BioTorch's alternative,
a `(E, C_in, KH, KW)` kernel applied to e tiled over the output positions, is
smaller but sends nearly the same delta to every position; for ImageNet-sized
inputs (and E = 1000) the dense projection would not fit. Like feedback
alignment's B, each projection is a pure function of (seed, layer path, shapes,
dtype), redrawn inside the step rather than stored.

The cost is one backward pass: the outermost combinator
(`funcnn.nn.output_error`) threads a zero "carrier" shaped like the output
through an identity tap at the input of each DFA layer and adds it to the
output, so the loss's backward fills the carrier with e; each tap's backward
replaces the layer's input delta by the projection. The exact input deltas of
the layers above are then unused, and XLA drops them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from funcnn.ops import custom_vjp, registry
from funcnn.ops.rule import Rule
from funcnn.rules.feedback import check_options, feedback_key
from funcnn.rules.model import walk
from funcnn.rules.scope import mapping_table, pick, scoped_at

FUNC = "direct_feedback_alignment"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class DirectFeedbackAlignment(Rule):
    """Direct feedback alignment for conv2d and dense layers of a model (see the
    module doc for what is replaced and how).

    Fields:
      seed: seeds the projections B, one per layer, drawn from the key
        `fold_in(PRNGKey(seed), sha256(path)[:4])`.
      gain: B's entries are normal with std `gain / sqrt(E)`, E the number of
        network outputs, so the projected delta has the RMS of e times `gain`.
      clip: clamp each projected delta to `[-clip, clip]`, or None.

    A model applies it (`model.apply`, the train and eval steps,
    `funcnn.backward_trace`, `funcnn.alignment`); an op alone has no output
    error and refuses it.

    Defaults: `gain=0.1`. Larger projections make the hidden layers' ReLU
    activations grow along them faster than the last layer can follow, and on
    LeNet-5 with real MNIST digits the loss explodes (gain 1, 0.3: 1e9 and
    more at lr 0.001-0.01 with SGD momentum); at 0.1 it trains at lr 0.001.

    Against BioTorch ("dfa"): BioTorch's conv projection is a small kernel
    over e tiled in space, with Xavier-uniform entries; this one is Nøkland's
    dense projection with normal entries (see the module doc).
    """

    seed: int = 0
    gain: float = 0.1
    clip: float | None = None

    ops: ClassVar[tuple[str, ...]] = ("conv2d", "dense")
    output_error: ClassVar[bool] = True

    def __post_init__(self):
        check_options(FUNC, seed=self.seed, clip=self.clip)
        s = self.gain
        if isinstance(s, bool) or not isinstance(s, int | float) or not s > 0:
            raise ValueError(f"{FUNC}: expected gain > 0, got {s!r}.")

    def for_op(self, op: str) -> Rule | str:
        if op in self.ops:
            raise ValueError(
                f"{op}: expected a rule an op can run alone, got {self!r}, which "
                "replaces a layer's input delta by a projection of the network's "
                "output error. Apply it to a model built with serial(...): "
                "model.apply(..., grad=rule) or make_train_step(model, ..., "
                "grad=rule)."
            )
        return super().for_op(op)

    def projection(self, path: str, x_shape, dtype, out_size: int, layout="NCHW"):
        """B of shape `(out_size, *x_shape[1:])` (x's own layout) for the layer
        at `path` whose input has `x_shape`."""
        feature = tuple(x_shape[1:])
        if len(feature) == 3 and layout == "NHWC":  # drawn in NCHW order
            feature = (feature[2], feature[0], feature[1])
        key = feedback_key(self.seed, path)
        wide = jnp.promote_types(dtype, jnp.float32)  # as draw_feedback does
        std = jnp.asarray(self.gain / math.sqrt(out_size), wide)
        b = (jax.random.normal(key, (out_size, *feature), wide) * std).astype(dtype)

        if len(feature) == 3 and layout == "NHWC":
            b = jnp.moveaxis(b, 1, -1)
        return b


def direct_feedback_alignment(
    seed: int = 0, *, gain: float = 0.1, clip: float | None = None
) -> DirectFeedbackAlignment:
    """Direct feedback alignment (Nøkland 2016); also
    `grad="direct_feedback_alignment"` (seed 0). See `DirectFeedbackAlignment`."""
    return DirectFeedbackAlignment(seed=seed, gain=gain, clip=clip)


# ----------------------------------------------------------------- the tap


def tap(x, carrier, projection, clip: float | None) -> tuple[Any, Any]:
    """Identity on `(x, carrier)`; its backward replaces x's cotangent by
    `e @ B`, e the carrier's cotangent `(N, ...)` flattened to `(N, E)`, B the
    `projection` `(E, *x.shape[1:])` in x's dtype, clamped to `[-clip, clip]`
    unless clip is None, and passes e on to the carrier."""
    return _tap(x, carrier, projection, clip)


@partial(custom_vjp, nondiff_argnums=(3,))
def _tap(x, carrier, projection, clip):
    del projection
    return x, carrier


def _tap_fwd(x, carrier, projection, clip):
    # B for the backward; x itself is not needed, only its dtype (B has it).
    return (x, carrier), projection


def _tap_bwd(clip, projection, cts):
    _, e = cts  # the true input delta is dropped: the projection replaces it
    n, size = e.shape[0], projection.shape[0]
    dx = e.reshape(n, size).astype(projection.dtype) @ projection.reshape(size, -1)
    dx = dx.reshape((n, *projection.shape[1:]))
    if clip is not None:
        dx = jnp.clip(dx, -clip, clip).astype(dx.dtype)
    return dx, e, jnp.zeros_like(projection)


_tap.defvjp(_tap_fwd, _tap_bwd)


# ------------------------------------------------------ specs and models


def uses_output_error(grad: Any) -> bool:
    """Whether `grad` (a name, a value or a mapping) holds a rule that needs the
    network's output error (direct feedback alignment)."""
    values = (
        [v for _, v in mapping_table("grad", grad)]
        if isinstance(grad, Mapping)
        else [grad]
    )
    for value in values:
        rule = registry.lookup("grad", value) if isinstance(value, str | Rule) else None
        if isinstance(rule, Rule) and rule.output_error:
            return True
    return False


def without_output_error(grad: Any) -> Any:
    """`grad` with every output-error rule replaced by "custom": the layers run
    their exact ops, and the taps do the rest."""

    def plain(value):
        rule = registry.lookup("grad", value) if isinstance(value, str | Rule) else None
        return "custom" if isinstance(rule, Rule) and rule.output_error else value

    if isinstance(grad, Mapping):
        return {key: plain(value) for key, value in grad.items()}
    return plain(grad)


def output_error_layers(func: str, model: Any, grad: Any) -> dict[str, Any]:
    """`{path: (rule, layout)}` for every conv2d and dense layer of `model` that
    `grad` gives an output-error rule, in forward order.

    Raises:
      ValueError: when there is none (no conv2d or dense layer under the rule).
    """
    out = {}
    for path, leaf in walk(model):
        info = getattr(leaf, "info", None)
        if info is None:
            continue
        rule = registry.lookup(func, pick(scoped_at(grad, path), layer=func))
        if isinstance(rule, Rule) and rule.output_error and info.op in rule.ops:
            out[path] = (rule, getattr(info, "layout", "NCHW"))
    if not out:
        raise ValueError(
            f"{func}: expected a model with a conv2d or dense layer under "
            f"{FUNC}, got none among its layers {[p for p, _ in walk(model)]}. "
            "The rule projects the output error to such layers; give it a model "
            "that has them, e.g. one ending in Dense."
        )
    return out

"""The backward pass made visible: every leaf layer's activations, deltas and
parameter gradients from one forward and one backward pass.

The CNN texts reason about each layer's error term, or sensitivity,
`delta = dE/d(layer output)`: the max pool routes it to the winner of each window,
the mean pool spreads it evenly over the window, and a conv sends it back through
the rotated filters. `backward_trace` returns that array for every layer of any
model, together with `dE/d(layer input)` (what the layer sends back) and the
layer's parameter gradients.

It adds a zero at every leaf layer's input and output through the layer hook and
differentiates with respect to those zeros (`funcnn.nn.probe`), so each layer's
backward pass is the one training uses: with `grad="custom"`, funcnn's hand-written
rules for conv and pool.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import rules
from funcnn.nn import probe
from funcnn.nn.core import Layer, walk
from funcnn.training.losses import loss_fn


@dataclasses.dataclass(frozen=True)
class LayerTrace:
    """One leaf layer's part of the forward and backward pass.

    Arrays have the shapes `apply` sees, batch axis first; a layer with a tuple
    input or output (Split, Concat, Add, after `branches`) has tuples there.

    Attributes:
        path: the key path in params, e.g. "03_conv", "05_residual/00_conv".
        name: the layer's name, e.g. "conv".
        input: x fed to the layer, e.g. of shape `(N, C, H, W)`.
        output: y = layer(x), e.g. of shape `(N, C_out, OH, OW)`.
        delta_in: dL/dx, the delta this layer sends back, shaped like `input`.
        delta_out: dL/dy, the layer's delta (error term, sensitivity), shaped
            like `output`.
        param_grads: dL/d(this layer's params), a tree like its params, or {}.
    """

    path: str  # key path in params, e.g. "03_conv", "05_residual/00_conv"
    name: str  # the layer's name, e.g. "conv"
    input: Any  # x fed to the layer, e.g. (N, C, H, W)
    output: Any  # y = layer(x), e.g. (N, C_out, OH, OW)
    delta_in: Any  # dL/dx: the delta this layer sends back, shaped like input
    delta_out: Any  # dL/dy: the layer's delta (error term, sensitivity)
    param_grads: Any  # dL/d(this layer's params), a tree like its params, or {}

    def __repr__(self) -> str:
        return (
            f"LayerTrace(path={self.path!r}, name={self.name!r}, "
            f"input={_shapes(self.input)}, output={_shapes(self.output)})"
        )


@dataclasses.dataclass(frozen=True)
class BackwardTrace:
    """What `backward_trace` returns: the loss and one `LayerTrace` per leaf layer,
    in forward order. `trace["03_conv"]` (or `trace[3]`) picks one layer.

    Attributes:
        loss: of shape `()`: the batch-mean loss, as `train_step` computes it.
        layers: one `LayerTrace` per leaf layer, in forward order.
    """

    loss: jax.Array  # shape=(): the batch-mean loss, as train_step computes it
    layers: list[LayerTrace]

    @property
    def paths(self) -> list[str]:
        return [layer.path for layer in self.layers]

    def __contains__(self, path: object) -> bool:
        return path in self.paths

    def __getitem__(self, path: str | int) -> LayerTrace:
        if isinstance(path, int):
            return self.layers[path]
        for layer in self.layers:
            if layer.path == path:
                return layer
        close = difflib.get_close_matches(str(path), self.paths, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"BackwardTrace: expected one of the traced layer paths {self.paths}, "
            f"got {path!r}.{hint}"
        )

    def __repr__(self) -> str:
        return f"BackwardTrace(loss={self.loss}, paths={self.paths})"

    def summary(self) -> str:
        """A table: per layer, its output shape, the RMS of its input and output
        deltas and the L2 norm of its parameter gradient."""
        rows = [("path", "output", "rms delta_out", "rms delta_in", "|param grad|")]
        for layer in self.layers:
            norm = _norm(layer.param_grads)
            rows.append(
                (
                    layer.path,
                    _shapes(layer.output),
                    f"{_rms(layer.delta_out):.3e}",
                    f"{_rms(layer.delta_in):.3e}",
                    "-" if norm is None else f"{norm:.3e}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows
        ]
        return f"loss {float(self.loss):.6g}\n" + "\n".join(lines)


for _cls, _meta in ((LayerTrace, ("path", "name")), (BackwardTrace, ())):
    jax.tree_util.register_dataclass(
        _cls,
        data_fields=[f.name for f in dataclasses.fields(_cls) if f.name not in _meta],
        meta_fields=list(_meta),
    )


def _shapes(tree: Any) -> str:
    shapes = [tuple(np.shape(a)) for a in jax.tree_util.tree_leaves(tree)]
    return str(shapes[0]) if len(shapes) == 1 else str(tuple(shapes))


def _rms(tree: Any) -> float:
    leaves = [
        np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(tree)
    ]
    return float(np.sqrt(np.mean(np.square(np.concatenate(leaves)))))


def _norm(tree: Any) -> float | None:
    leaves = [
        np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(tree)
    ]
    return float(np.linalg.norm(np.concatenate(leaves))) if leaves else None


def _check_batch(func: str, batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, Sequence) or len(batch) != 2:
        got = (
            f"a {type(batch).__name__} of length {len(batch)}"
            if isinstance(batch, Sequence)
            else f"a {type(batch).__name__}"
        )
        raise TypeError(
            f"{func}: expected batch to be a pair (x, y) as for train_step, got "
            f"{got}. Pass (x, y) with x of shape (N, ...) and y of shape (N,) "
            "(or the loss's targets)."
        )
    return batch[0], batch[1]


def backward_trace(
    model: Layer,
    params: Any,
    state: Any,
    batch: tuple[Any, Any],
    *,
    loss: str | Callable = "cross_entropy",
    label_smoothing: float = 0.0,
    grad: Any = "custom",
    train: bool = True,
    key: jax.Array | None = None,
) -> BackwardTrace:
    """One forward and one backward pass that keep every leaf layer's values.

    Works under `jax.jit` (close over `model`, `loss`, `grad` and `train`).

    Args:
        model: a `Layer`, e.g. `funcnn.serial(...)` or `funcnn.models.lenet()`.
        params: the model's params, as `model.init` returns them.
        state: the model's state, as `model.init` returns it.
        batch: `(x, y)` as for `train_step`: x of shape `(N, C, H, W)` (or what the
            model takes), y the labels `(N,)` (or the targets a callable loss takes).
        loss: as in `make_train_step`: "cross_entropy", "mse" (against one-hot
            labels) or a callable `(outputs, y) -> scalar`, the batch mean.
        label_smoothing: as in `make_train_step`, for "cross_entropy".
        grad: the backward rules, as in `make_train_step`: "custom", "autodiff" or
            a mapping from layer paths to those.
        train: apply the model in training mode (BatchNorm batch statistics,
            Dropout). Its updated state is not returned.
        key: a PRNG key, needed with `train=True` when the model has Dropout.

    Returns:
        A `BackwardTrace`: `loss` (the batch-mean loss) and `layers`, one
        `LayerTrace` per leaf layer in forward order (combinators get none), with
        `path`, `name`, `input`, `output`, `delta_in = dL/d(input)`,
        `delta_out = dL/d(output)` and `param_grads`.

    Raises:
        TypeError, ValueError: naming what was expected, for a model that is not a
            Layer, a bad grad or loss, a batch that is not `(x, y)`, a batch the
            model or loss rejects (naming the layer), or a missing Dropout key.
    """
    func = "backward_trace"
    if not isinstance(model, Layer):
        raise TypeError(
            f"{func}: expected a funcnn Layer as model, got {type(model).__name__}. "
            "Build it with funcnn.serial(...) or funcnn.models."
        )
    rules.validate(func, grad)
    loss_of = loss_fn(loss, label_smoothing, func=func)
    x, y = _check_batch(func, batch)
    if train and key is None:
        dropouts = [path for path, leaf in walk(model) if leaf.name == "dropout"]
        if dropouts:
            raise ValueError(
                f"{func}: expected key= (a PRNG key) with train=True, for the "
                f"Dropout layers at {dropouts}, got key=None. Pass "
                "key=jax.random.key(0), or train=False to trace without dropout."
            )

    def objective(p, hook):
        out, _ = model.apply(p, state, x, train=train, key=key, grad=grad, hook=hook)
        return loss_of(out, y), None

    context = (
        f"expected a batch (x, y) that the model and the loss accept, got x "
        f"{_describe(x)} and y {_describe(y)}"
    )
    specs = probe.leaf_specs(objective, params, func=func, context=context)
    res = probe.value_and_grad_with_probes(objective, params, specs, record=True)
    delta_in = res.delta_in or {}
    layers = []
    for spec in specs:
        x_in, y_out = res.taps[spec.path]
        layers.append(
            LayerTrace(
                path=spec.path,
                name=spec.name,
                input=x_in,
                output=y_out,
                delta_in=delta_in[spec.path],
                delta_out=res.delta_out[spec.path],
                param_grads=probe.subtree(res.grads, spec.keys),
            )
        )
    return BackwardTrace(loss=res.value, layers=layers)


def _describe(a: Any) -> str:
    shape, dtype = getattr(a, "shape", None), getattr(a, "dtype", None)
    if shape is None:
        return f"of type {type(a).__name__}"
    return f"of shape {tuple(shape)} {jnp.dtype(dtype).name}"

"""`run_plots`, a plot hook for `fit` (the CLI passes it in): curves.png,
filters.png, feature_maps.png, deltas.png and, for runs that logged per-layer
statistics, grad_flow.png."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from funcnn.inspect.plots.backward import plot_deltas, plot_grad_flow
from funcnn.inspect.plots.run import plot_curves, plot_feature_maps, plot_filters
from funcnn.nn.combinators import serial
from funcnn.nn.core import Layer
from funcnn.training.run.metrics import read_metrics


def run_plots(
    layers: Sequence[Layer], image, label: int | None = None, *, grad: Any = "custom"
) -> Callable[[Path | None, Any], None]:
    """A `plot=` hook for `fit` that draws a run's figures into its directory.

    curves.png: loss and accuracy from metrics.jsonl; filters.png: the filters
    of the first conv; feature_maps.png: what each conv and pool layer makes of
    `image`; deltas.png (with `label`): each conv and pool layer's delta for
    `image` and a max pool's routed input delta (`funcnn.backward_trace`);
    grad_flow.png: each layer's gradient norm over the steps, when the run
    logged them (`make_train_step(layer_stats=True)`).

    Args:
        layers: the model as the list of layers given to `funcnn.serial`.
        image: one input image of shape `(C, H, W)`.
        label: its class, for deltas.png; None draws no deltas.
        grad: the model's `grad=` value.

    Returns:
        `hook(run_dir, state)` for a `TrainState`; it does nothing without a
        run directory.
    """

    def hook(run_dir: Path | None, state) -> None:
        if run_dir is None:
            return
        records = [
            {k: math.nan if v is None else v for k, v in r.items()}
            for r in read_metrics(run_dir)
        ]
        plot_curves(records, run_dir / "curves.png", title=str(run_dir))
        conv = next((k for k in state.params if k.endswith("_conv")), None)
        if conv is not None:
            title = f"learned filters of {conv}"
            w = state.params[conv]["w"]
            plot_filters(w, run_dir / "filters.png", title=title)
        plot_feature_maps(
            list(layers),
            state.params,
            state.model_state,
            image,
            run_dir / "feature_maps.png",
            grad=grad,
        )
        if label is not None:
            plot_deltas(
                serial(*layers),
                state.params,
                state.model_state,
                image,
                int(label),
                run_dir / "deltas.png",
                grad=grad,
            )
        if any(k.startswith("grad_norm/") for r in records for k in r):
            plot_grad_flow(records, run_dir / "grad_flow.png", title=str(run_dir))

    return hook

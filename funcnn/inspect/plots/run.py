"""PNG plots of a training run: curves, first-layer filters and feature maps.

Figures are drawn with `matplotlib.figure.Figure` and saved through the Agg
canvas, so nothing here needs a display or touches pyplot's global backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from funcnn.nn.core import Layer

FEATURE_LAYERS = ("conv", "maxpool", "avgpool")
"""The layer names whose outputs (and deltas) the run plots show by default."""


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_curves(
    records: Iterable[dict[str, Any]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Loss and accuracy against the step: train per logged step, train and test
    per epoch.

    Args:
        records: metrics records as in a run's metrics.jsonl: dicts with "type"
            ("step" or "epoch"), "step", "loss", "accuracy", and for epochs
            "test_loss" and "test_accuracy". Other records are ignored.
        path: the PNG file to write.
        title: an optional figure title.

    Returns:
        The path written.
    """
    records = list(records)
    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    fig = Figure(figsize=(10, 4))
    for i, (metric, label) in enumerate([("loss", "loss"), ("accuracy", "accuracy")]):
        ax = fig.add_subplot(1, 2, i + 1)
        if steps:
            ax.plot(
                [r["step"] for r in steps],
                [r[metric] for r in steps],
                lw=0.8,
                alpha=0.6,
                label="train (logged steps)",
            )
        if epochs:
            xs = [r["step"] for r in epochs]
            ax.plot(xs, [r[metric] for r in epochs], "o-", label="train (epoch)")
            if all(f"test_{metric}" in r for r in epochs):
                test = [float(r[f"test_{metric}"]) for r in epochs]
                ax.plot(xs, test, "s-", label="test (epoch)")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if metric == "loss" and all(r[metric] > 0 for r in steps + epochs):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            note = "no logged steps yet"
            ax.text(0.5, 0.5, note, ha="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_filters(
    w, path: str | os.PathLike, *, max_in_channels: int = 8, title: str = ""
) -> Path:
    """A grid of convolution filters, one row per output channel.

    Args:
        w: kernels of shape `(C_out, C_in, KH, KW)`, e.g. `params["00_conv"]["w"]`.
        path: the PNG file to write.
        max_in_channels: at most this many input channels are shown as columns.
        title: an optional figure title.

    Returns:
        The path written. Colours share one symmetric scale (blue < 0 < red).
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(
            f"plot_filters: expected kernels of shape (C_out, C_in, KH, KW), got "
            f"shape {w.shape}. Pass params[...]['w'] of a Conv2D layer."
        )
    w = w[:, :max_in_channels]
    c_out, c_in = w.shape[:2]
    # Out channels fill a grid of up to 8 columns of (C_in) filters each.
    cols = min(c_out, 8)
    rows = math.ceil(c_out / cols)
    scale = float(np.abs(w).max()) or 1.0
    fig = Figure(figsize=(1.1 * cols * c_in + 0.5, 1.1 * rows + 0.6))
    for o in range(c_out):
        for i in range(c_in):
            ax = fig.add_subplot(
                rows, cols * c_in, (o // cols) * cols * c_in + (o % cols) * c_in + i + 1
            )
            ax.imshow(w[o, i], cmap="bwr", vmin=-scale, vmax=scale)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{o}", fontsize=7)
    fig.suptitle(title or f"conv filters {tuple(w.shape)}", fontsize=9)
    return _save(fig, path)


def layer_outputs(
    layers: Sequence[Layer], params, model_state, x, *, grad: str = "custom"
) -> list[tuple[str, Any]]:
    """The activations after each layer of `serial(*layers)`, in evaluation mode.

    Args:
        layers: the layers passed to `funcnn.serial`.
        params: that serial model's params, a dict keyed `"{i:02d}_{layer.name}"`.
        model_state: its state, keyed the same way.
        x: an input batch of shape `(N, C, H, W)`.
        grad: passed to every layer.

    Returns:
        `[(key, y_i)]`, one per layer, where `y_i` is the output of layer i.
    """
    outputs = []
    for i, layer in enumerate(layers):
        name = f"{i:02d}_{layer.name}"
        if name not in params:
            raise ValueError(
                f"layer_outputs: expected params of serial(*layers) with key "
                f"{name!r}, got keys {sorted(params)}."
            )
        x, _ = layer.apply(params[name], model_state[name], x, train=False, grad=grad)
        outputs.append((name, x))
    return outputs


def plot_feature_maps(
    layers: Sequence[Layer],
    params,
    model_state,
    image,
    path: str | os.PathLike,
    *,
    kinds: Sequence[str] = FEATURE_LAYERS,
    max_channels: int = 16,
    grad: str = "custom",
    title: str = "",
) -> Path:
    """The feature maps of one image after each conv and pool layer.

    Args:
        layers: as in `layer_outputs`.
        params: as in `layer_outputs`.
        model_state: as in `layer_outputs`.
        grad: as in `layer_outputs`.
        image: one input of shape `(C, H, W)` (already normalised).
        path: the PNG file to write.
        kinds: the layer names whose outputs are shown.
        max_channels: at most this many channels per layer.
        title: an optional figure title.

    Returns:
        The path written: the input on the first row, one row per shown layer.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(
            f"plot_feature_maps: expected one image of shape (C, H, W), got shape "
            f"{image.shape}. Pass x_test[0], not a batch."
        )
    outs = layer_outputs(layers, params, model_state, image[None], grad=grad)
    rows = [("input", image)] + [
        (name, np.asarray(y[0]))
        for name, y in outs
        if name.split("_", 1)[1] in kinds and np.ndim(y) == 4
    ]
    cols = max(min(max_channels, r[1].shape[0]) for r in rows)
    fig = Figure(figsize=(1.0 * cols + 1.5, 1.1 * len(rows) + 0.5))
    for r, (name, maps) in enumerate(rows):
        for c in range(min(max_channels, maps.shape[0])):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(maps[c], cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{name}\n{maps.shape[1]}x{maps.shape[2]}", fontsize=7)
    fig.suptitle(title or "feature maps of one test image", fontsize=9)
    return _save(fig, path)

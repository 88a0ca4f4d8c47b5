"""PNG plots of a training run: curves, first-layer filters, feature maps, and the
backward pass: each layer's deltas for one image and the gradient flow over training.

Figures are drawn with `matplotlib.figure.Figure` and saved through the Agg
canvas, so nothing here needs a display or touches pyplot's global backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from funcnn.inspect.trace import backward_trace
from funcnn.nn.core import Layer, walk

FEATURE_LAYERS = ("conv", "maxpool", "avgpool")
DELTA_CMAP = "RdBu_r"  # diverging: blue < 0 < red, white at zero


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
        params, model_state: that serial model's params and state, dicts keyed
            `"{i:02d}_{layer.name}"`.
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
        layers, params, model_state, grad: as in `layer_outputs`.
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


def _delta_row(fig, grid, r, maps, cols, label, *, windows=None):
    """One row of a delta figure: channels side by side on one symmetric scale,
    with a colour bar; `windows` (KH, KW, SH, SW) draws the pool windows."""
    scale = float(np.abs(maps).max()) or 1.0
    axes = []
    for c in range(min(cols, maps.shape[0])):
        ax = fig.add_subplot(grid[r, c])
        im = ax.imshow(maps[c], cmap=DELTA_CMAP, vmin=-scale, vmax=scale)
        if windows is not None:
            kh, kw, sh, sw = windows
            if (kh, kw) == (sh, sw):  # tiled windows: their borders read clearly
                for y in np.arange(sh, maps.shape[1], sh) - 0.5:
                    ax.axhline(y, color="0.6", lw=0.5)
                for x in np.arange(sw, maps.shape[2], sw) - 0.5:
                    ax.axvline(x, color="0.6", lw=0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    axes[0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    bar = fig.colorbar(im, cax=fig.add_subplot(grid[r, cols]))
    bar.ax.tick_params(labelsize=6)
    bar.ax.yaxis.get_offset_text().set_fontsize(6)
    return axes


def plot_deltas(
    model: Layer,
    params,
    model_state,
    image,
    label: int,
    path: str | os.PathLike,
    *,
    grad: Any = "custom",
    loss: Any = "cross_entropy",
    kinds: Sequence[str] = FEATURE_LAYERS,
    pool: str | None = None,
    max_channels: int = 16,
    title: str = "",
) -> Path:
    """Each conv and pool layer's delta (error term, sensitivity) dL/d(output) for
    one image, and one max pool's dL/d(input), where each delta sits at the
    winner of its window.

    Args:
        model, params, model_state: the model and its params and state; it runs
            in evaluation mode (`train=False`) through `funcnn.backward_trace`.
        image: one input of shape `(C, H, W)` (already normalised).
        label: its class, for the loss.
        path: the PNG file to write.
        grad, loss: as in `backward_trace`.
        kinds: the layer names whose `delta_out` is shown (4-D outputs only).
        pool: the path of the max pool whose `delta_in` is shown (the first max
            pool by default; none if the model has none).
        max_channels: at most this many channels per layer.
        title: an optional figure title.

    Returns:
        The path written: the input on the first row, then one row per shown
        layer in forward order, each on its own symmetric colour scale (blue
        below zero, red above, white at zero); the max pool's `delta_in` row
        sits just above its `delta_out` row, with the pool windows outlined.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(
            f"plot_deltas: expected one image of shape (C, H, W), got shape "
            f"{image.shape}. Pass x_test[0], not a batch."
        )
    maxpools = [
        path or leaf.name for path, leaf in walk(model) if leaf.name == "maxpool"
    ]
    if pool is None:
        pool = maxpools[0] if maxpools else None
    elif pool not in maxpools:
        raise ValueError(
            f"plot_deltas: expected pool to be the path of a max pool, one of "
            f"{maxpools}, got {pool!r}."
        )
    batch = (jnp.asarray(image[None]), jnp.asarray([int(label)], jnp.int32))
    # One compiled program instead of an eager dispatch (and compile) per op.
    trace = jax.jit(
        lambda p, s, b: backward_trace(
            model, p, s, b, loss=loss, grad=grad, train=False
        )
    )(params, model_state, batch)
    rows: list[tuple[str, np.ndarray, Any]] = []
    for t in trace.layers:
        if t.path == pool:
            windows = _pool_windows(t.input, t.output)
            rows.append((f"{t.path}\ndelta_in\n(routed)", t.delta_in, windows))
        if t.name in kinds and np.ndim(t.delta_out) == 4:
            rows.append((f"{t.path}\ndelta_out", t.delta_out, None))
    cols = max([min(max_channels, np.shape(d)[1]) for _, d, _ in rows] + [1])
    fig = Figure(figsize=(0.8 * cols + 2.2, 0.85 * (len(rows) + 1) + 0.9))
    top = 1.0 - 0.55 / fig.get_figheight()  # room for the title only
    grid = fig.add_gridspec(
        len(rows) + 1,
        cols + 1,
        width_ratios=[1] * cols + [0.25],
        wspace=0.15,
        left=1.1 / fig.get_figwidth(),
        right=1.0 - 0.5 / fig.get_figwidth(),
        top=top,
        bottom=0.15 / fig.get_figheight(),
    )
    logits = np.asarray(trace.layers[-1].output)[0]
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image[0], cmap="gray")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel("input", fontsize=7, rotation=0, ha="right", va="center")
    fig.add_subplot(grid[0, 1:]).axis("off")
    fig.axes[-1].text(
        0.02,
        0.5,
        f"label {int(label)}, predicted {int(np.argmax(logits))}, loss "
        f"{float(trace.loss):.3g}\n"
        "each row: one layer's delta dL/d(output) per channel, on its own "
        "symmetric scale\n(red > 0 > blue, white = 0); the routed row is the "
        "max pool's dL/d(input): each window's delta at its winner",
        fontsize=7,
        va="center",
    )
    for r, (name, deltas, windows) in enumerate(rows, start=1):
        maps = np.asarray(deltas, np.float32)[0]
        label_text = f"{name}\n{maps.shape[1]}x{maps.shape[2]}"
        if maps.shape[0] > cols:
            label_text += f"\n({cols} of {maps.shape[0]} ch)"
        _delta_row(fig, grid, r, maps, cols, label_text, windows=windows)
    fig.suptitle(
        title or f"deltas (error terms) of one test image, grad={grad!r}", fontsize=9
    )
    return _save(fig, path)


def _pool_windows(x, y) -> tuple[int, int, int, int] | None:
    """(KH, KW, SH, SW) of a non-overlapping, unpadded pool, read from its input
    and output sizes; None where the windows cannot be drawn as a tiling."""
    h, w = np.shape(x)[2:]
    oh, ow = np.shape(y)[2:]
    if h % oh or w % ow:
        return None
    return h // oh, w // ow, h // oh, w // ow


def plot_grad_flow(
    records: Iterable[dict[str, Any]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Each layer's gradient norm over training, on a log scale: vanishing or
    exploding gradients show as lines that fall or climb away from the rest.

    Args:
        records: metrics records as in a run's metrics.jsonl with
            `make_train_step(layer_stats=True)`: dicts with "step" and fields
            "grad_norm/<layer path>" (and, if present, "delta_rms/<layer path>",
            drawn in a second panel). Records without such fields are ignored.
        path: the PNG file to write.
        title: an optional figure title.

    Returns:
        The path written: one line per layer, coloured from the first layer (dark)
        to the last (light), labelled with its path.

    Raises:
        ValueError: if no record has a "grad_norm/<path>" field.
    """
    records = [r for r in records if any(k.startswith("grad_norm/") for k in r)]
    if not records:
        raise ValueError(
            "plot_grad_flow: expected metrics records with 'grad_norm/<layer path>' "
            "fields, got none. Train with make_train_step(..., layer_stats=True) "
            "and log every metric of the step."
        )
    panels = [("grad_norm/", "L2 norm of the layer's parameter gradient")]
    if any(k.startswith("delta_rms/") for k in records[0]):
        panels.append(("delta_rms/", "RMS of the layer's delta dL/d(output)"))
    fig = Figure(figsize=(7.0 * len(panels) + 0.5, 4.5))
    steps = [r["step"] for r in records]
    for i, (prefix, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        # The "NN_" prefixes of layer paths sort in forward order.
        names = sorted({k for r in records for k in r if k.startswith(prefix)})
        colors = _depth_colors(len(names))
        for name, color in zip(names, colors):
            xs = [s for s, r in zip(steps, records) if r.get(name, 0) > 0]
            ys = [r[name] for r in records if r.get(name, 0) > 0]
            ax.plot(xs, ys, color=color, lw=1.2, label=name[len(prefix) :])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(prefix.rstrip("/") + " per layer", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(
            fontsize=7,
            title="layer (input\nto output)",
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    fig.suptitle(title or "gradient flow over training", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _depth_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]

"""PNG plots of the backward pass: one image's deltas layer by layer, and each
layer's gradient norm over training (gradient flow).

Figures are drawn with `matplotlib.figure.Figure` and saved through the Agg
canvas, so nothing here needs a display or touches pyplot's global backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from funcnn.inspect.plots.run import FEATURE_LAYERS, _save
from funcnn.inspect.trace import backward_trace
from funcnn.nn.core import Layer, walk

DELTA_CMAP = "RdBu_r"  # diverging: blue < 0 < red, white at zero


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
        model: the model; it runs in evaluation mode (`train=False`) through
            `funcnn.backward_trace`.
        params: its params.
        model_state: its state.
        image: one input of shape `(C, H, W)` (already normalised).
        label: its class, for the loss.
        path: the PNG file to write.
        grad: as in `backward_trace`.
        loss: as in `backward_trace`.
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

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]

"""accuracy.png and alignment.png of a sweep, from results.json's curves.

- accuracy.png: one panel per data set, the test error (%) after each epoch on a
  log axis, one line per rule (mean over seeds, band from the best to the worst
  seed); the epochs on a log axis too when an entry trains longer than the task
  ("forward_gradient_5x", dashed in its rule's color);
- alignment.png: a row per measured rule and, per data set, a column per
  measure (gradient angle, delta angle and, where logged, the W-B angle), one
  line per layer (mean over seeds); point e is measured after e epochs (on the
  first batch of epoch e + 1, before its update).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

from lab.report import KINDS
from lab.runs import parse_entry

STYLES = ("-", "--", "-.", ":")


def _figure(width: float, height: float):
    """A matplotlib Figure drawn by Agg, with no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _array(rows) -> np.ndarray:
    """Per seed, per epoch values (None: NaN), padded to the longest seed."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = [np.nan if v is None else v for v in r]
    return out


def _over_seeds(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per epoch: the mean, min and max over seeds (axis 0) of the values that
    are numbers; NaN where no seed has one (a layer whose angle is undefined)."""
    seen = ~np.isnan(a)
    count = seen.sum(0)
    mean = np.where(count > 0, np.where(seen, a, 0.0).sum(0) / np.maximum(count, 1),
                    np.nan)  # fmt: skip
    low = np.where(count > 0, np.where(seen, a, np.inf).min(0), np.nan)
    high = np.where(count > 0, np.where(seen, a, -np.inf).max(0), np.nan)
    return mean, low, high


def plot_accuracy(summary: dict, path: Path) -> None:
    """Writes accuracy.png: test error per epoch, per data set and rule."""
    datasets = summary["datasets"]
    width = 6.5 * len(datasets)
    fig = _figure(width, 5.2)
    colors = _colors()
    handles: dict = {}
    for col, (name, data) in enumerate(datasets.items()):
        ax = fig.add_subplot(1, len(datasets), col + 1)
        bases: list[str] = []  # "<rule>_<k>x" takes its rule's color, dashed
        for rule, r in data["rules"].items():
            base, factor = parse_entry(rule)
            if base not in bases:
                bases.append(base)
            i = bases.index(base)
            acc = _array(r["curves"].get("eval_accuracy", [[]]))
            err = 100.0 * (1.0 - acc)
            epochs = np.arange(1, err.shape[1] + 1)
            color = colors[i % len(colors)]
            style = "--" if factor > 1 else STYLES[(i // len(colors)) % len(STYLES)]
            mean, low, high = _over_seeds(err)
            (line,) = ax.plot(epochs, mean, style, color=color, marker="o",
                              markersize=2.5)  # fmt: skip
            handles.setdefault(rule, line)
            ax.fill_between(epochs, low, high, color=color, alpha=0.15, lw=0)
        ax.set_yscale("log")
        longest = max([data["task"]["epochs"]] + [r.get("epochs") or 0 for r in
                                                  data["rules"].values()])  # fmt: skip
        if longest > data["task"]["epochs"]:
            # A rule trained k times longer ("forward_gradient_5x"): a log axis
            # keeps the task's epochs readable beside its longer run.
            ax.set_xscale("log")
            ax.set_xlim(0.8, longest * 1.2)
            ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= longest]
            if longest > 1.5 * ticks[-1]:  # the last epoch, unless crowded
                ticks.append(longest)
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("epoch, log scale")
        else:
            ax.set_xlim(0.5, longest + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%), log scale")
        ax.set_title(f"{name}, {data['task']['model']}: mean over seeds, band = range")
        ax.grid(alpha=0.3, which="both")
    # One legend for every panel, below them: the rules are the same.
    # As many columns as fit the figure's width (long rule names need ~2.6 in).
    ncol = max(1, min(len(handles), int(width // 2.6)))
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=ncol, fontsize=9, frameon=False)  # fmt: skip
    rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=90)


def _colors() -> list:
    from matplotlib import colormaps

    return list(colormaps["tab10"].colors)


def plot_alignment(summary: dict, path: Path) -> bool:
    """Writes alignment.png; returns False (and writes nothing) when no rule
    logged angles (backprop alone)."""
    panels = []  # (dataset, kind prefix)
    rules: list[str] = []
    for name, data in summary["datasets"].items():
        for prefix in KINDS:
            if prefix == "norm_ratio/":
                continue
            if any(
                k.startswith(prefix)
                for r in data["rules"].values()
                for k in r["curves"]
            ):
                panels.append((name, prefix))
        rules += [
            rule
            for rule, r in data["rules"].items()
            if rule not in rules and any(k.startswith("align_") for k in r["curves"])
        ]
    if not panels:
        return False
    fig = _figure(3.6 * len(panels), 2.7 * len(rules) + 0.6)
    for row, rule in enumerate(rules):
        for col, (name, prefix) in enumerate(panels):
            ax = fig.add_subplot(len(rules), len(panels), row * len(panels) + col + 1)
            r = summary["datasets"][name]["rules"].get(rule)
            keys = [] if r is None else [k for k in r["curves"] if k.startswith(prefix)]
            drawn = False
            for i, key in enumerate(keys):
                mean = _over_seeds(_array(r["curves"][key]))[0]
                drawn = drawn or bool(np.isfinite(mean).any())
                ax.plot(np.arange(len(mean)), mean, STYLES[i // 10], marker="o",
                        markersize=2.5, label=key.split("/", 1)[1])  # fmt: skip
            ax.axhline(90, color="k", lw=0.7, ls="--")
            ax.set_ylim(0, 180)
            ax.set_yticks([0, 45, 90, 135, 180])
            # "<rule>_<k>x" measured k times the task's epochs
            epochs = summary["datasets"][name]["task"]["epochs"]
            epochs = max(epochs, (r or {}).get("epochs") or 0)
            ax.set_xlim(-0.3, epochs + 0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if row == len(rules) - 1:
                ax.set_xlabel("epochs trained")
            if col == 0:
                ax.set_ylabel(f"{rule}\ndegrees", fontsize=9)
            ax.set_title(f"{name}: {KINDS[prefix]}", fontsize=9)
            if keys and (col == 0 or panels[col - 1][0] != name):
                ax.legend(fontsize=7, loc="best", framealpha=0.8)
            if not drawn:
                why = (
                    "undefined: zero or non-finite gradients" if keys else "not logged"
                )
                ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8,
                        transform=ax.transAxes, color="0.4")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True

"""Draws the figures of the documentation site into docs/figures/.

    python docs/figures/make_figures.py                    # all of them, ~2 min
    python docs/figures/make_figures.py --only vanishing bench
    python docs/figures/make_figures.py --quick --out /tmp/figs   # a smoke run

- conv_backward.png, pool_backward.png: the by-hand tutorial's arrays (its
  3x3 input, 2x2 filter and deltas; the 4x4 max pool with a tie).
- deltas.png, grad_flow.png: from the main job itself,
  `experiments/train.py --layer-stats` (40 epochs; 2 steps with --quick).
- vanishing.png: each conv layer's delta RMS and gradient norm at
  initialisation in 16-block plain nets and the same nets with shortcuts (the
  nets of the "See the backward pass" tutorial; 4 blocks with --quick).
- bench.png: the benchmark's own chart (`benchmarks.report.chart`) of a
  results.json: by default the medians of the 2026-12-03 run stored next to this
  script; pass `--bench-results bench_out/results.json` after a new run.

The figures are committed; tests/test_docs.py runs this script with --quick.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ and experiments/ live at the root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import funcnn as fn  # noqa: E402

FIGURES = (
    "conv_backward",
    "pool_backward",
    "deltas",
    "grad_flow",
    "vanishing",
    "bench",
)
BENCH_RESULTS = HERE / "bench_2026-12-03.json"
DELTA_CMAP = "RdBu_r"


# ------------------------------------------------------------- by-hand arrays


def _grid(ax, a, title, *, scale=None, boxes=(), zero_ring=0):
    """An annotated grid of a small 2-D array, on a diverging colour scale."""
    a = np.asarray(a, float)
    scale = scale or (float(np.abs(a).max()) or 1.0)
    ax.imshow(a, cmap=DELTA_CMAP, vmin=-scale, vmax=scale)
    for (i, j), v in np.ndenumerate(a):
        text = f"{v:g}"
        ring = zero_ring and (
            i < zero_ring
            or j < zero_ring
            or i >= a.shape[0] - zero_ring
            or j >= a.shape[1] - zero_ring
        )
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=9,
            color="0.55" if ring else "black",
        )
    for r, c, h, w, color in boxes:
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), w, h, fill=False, lw=2, ec=color))
    ax.set_xticks(np.arange(a.shape[1] + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(a.shape[0] + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.75", lw=0.6)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_title(title, fontsize=9)


def conv_backward(out: Path) -> None:
    """The conv's backward on the tutorial's 3x3 input and 2x2 filter."""
    x = np.array([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    w = np.array([[1.0, 2], [3, 4]])
    g = np.array([[1.0, -1], [2, 0.5]])
    xj, wj, gj = (jnp.asarray(a)[None, None] for a in (x, w, g))
    _, vjp = jax.vjp(lambda x, w: fn.conv2d(x, w), xj, wj)
    dx, dw = (np.asarray(a)[0, 0] for a in vjp(gj))
    fig = Figure(figsize=(12.5, 5.2))
    axes = fig.subplots(2, 4, gridspec_kw={"width_ratios": [3, 2, 4, 3]})
    top, bottom = axes
    _grid(top[0], x, "input X (3x3)")
    _grid(top[1], g, "deltas G = dL/dY (2x2)")
    _grid(top[2], x, "dW: X correlated with G", boxes=[(0, 0, 2, 2, "tab:green")])
    _grid(top[3], dw, "dW (2x2)")
    _grid(bottom[0], w, "filter W (2x2)")
    _grid(bottom[1], w[::-1, ::-1], "W rotated by 180°")
    _grid(
        bottom[2],
        np.pad(g, 1),
        "G padded by K-1 = 1 zeros",
        zero_ring=1,
        boxes=[(0, 0, 2, 2, "tab:green")],
    )
    _grid(bottom[3], dx, "dX: full correlation (3x3)")
    fig.suptitle(
        "conv2d backward, by hand: dW = X ⋆ G (the input correlated with the deltas);"
        "  dX = pad(G) ⋆ rot180(W) (a full correlation with the rotated filter)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "conv_backward.png", dpi=110)


def pool_backward(out: Path) -> None:
    """The max pool's routing (with a tie) and the mean pool's spreading."""
    x = np.array([[1.0, 3, 2, 0], [3, 0, 1, 1], [4, 2, 5, 6], [1, 0, 2, 1]])
    g = np.array([[1.0, -2], [3, 4]])
    xj, gj = jnp.asarray(x)[None, None], jnp.asarray(g)[None, None]
    routed = np.asarray(jax.vjp(lambda x: fn.max_pool2d(x, 2), xj)[1](gj)[0])[0, 0]
    spread = np.asarray(jax.vjp(lambda x: fn.avg_pool2d(x, 2), xj)[1](gj)[0])[0, 0]
    windows = [(r, c, 2, 2, "0.3") for r in (0, 2) for c in (0, 2)]
    fig = Figure(figsize=(12.5, 3.9))
    axes = fig.subplots(1, 4)
    _grid(
        axes[0],
        x,
        "input (4x4): a tie of two 3s",
        boxes=windows + [(0, 1, 1, 1, "tab:orange"), (1, 0, 1, 1, "tab:orange")],
    )
    _grid(axes[1], g, "deltas of the 2x2 outputs")
    _grid(
        axes[2],
        routed,
        "max pool dX: each delta to\nits window's first maximum",
        scale=4,
        boxes=windows,
    )
    _grid(
        axes[3],
        spread,
        "mean pool dX: each delta / 4\nto all of its window",
        scale=4,
        boxes=windows,
    )
    fig.tight_layout()
    fig.savefig(out / "pool_backward.png", dpi=110)


# ------------------------------------------------------------- the main job


def main_job(out: Path, quick: bool, names: set[str]) -> None:
    """deltas.png and grad_flow.png of `experiments/train.py --layer-stats`."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / "main-job"  # the plots' titles name the run
        cmd = [
            sys.executable,
            str(ROOT / "experiments" / "train.py"),
            "--layer-stats",
            "--no-progress",
            "--out-dir",
            "runs/main-job",
        ]
        if quick:
            cmd += ["--epochs", "1", "--max-steps", "2", "--log-every", "1"]
        subprocess.run(cmd, check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        for name in names & {"deltas", "grad_flow"}:
            shutil.copyfile(run / f"{name}.png", out / f"{name}.png")


# ------------------------------------------------------- vanishing gradients


def deep(depth, act, shortcuts, gain=1.0):
    """As in the tutorial: a stem conv, `depth` conv + act blocks (with identity
    shortcuts, a ResNet), global average pooling and a dense layer."""

    def w_init(key, shape, fan_in, dtype):
        return gain * fn.nn.he_normal(key, shape, fan_in, dtype)

    layers = [fn.Conv2D(8, 3, padding=1)]
    for _ in range(depth):
        block = [fn.Conv2D(8, 3, padding=1, w_init=w_init), act()]
        layers += [fn.residual(*block)] if shortcuts else block
    return fn.serial(*layers, fn.GlobalAvgPool2D(), fn.Dense(10))


def vanishing(out: Path, quick: bool) -> None:
    """Per conv layer, input to output: delta RMS and weight-gradient norm."""
    ds = fn.data.load_digits()
    norm = fn.data.fit_normalizer(ds.x_train)
    batch = (norm.apply(ds.x_train[:32]), jnp.asarray(ds.y_train[:32]))
    depth = 4 if quick else 16
    nets = {
        "plain, sigmoid (vanishing)": deep(depth, fn.Sigmoid, False),
        "with shortcuts, sigmoid": deep(depth, fn.Sigmoid, True),
        "plain, ReLU, 2x He init (exploding)": deep(depth, fn.Relu, False, 2.0),
        "plain, ReLU, He init": deep(depth, fn.Relu, False),
    }
    trace = jax.jit(fn.backward_trace, static_argnums=0)
    fig = Figure(figsize=(12, 4.6))
    left, right = fig.subplots(1, 2)
    for (label, net), style in zip(nets.items(), ("-o", "-s", "--^", "--v")):
        _, params, state = net.init(jax.random.key(0), batch[0].shape)
        convs = [t for t in trace(net, params, state, batch).layers if t.name == "conv"]
        rms = [float(np.sqrt(np.mean(np.square(t.delta_out)))) for t in convs]
        grads = [float(np.linalg.norm(t.param_grads["w"])) for t in convs]
        depth_axis = np.arange(1, len(convs) + 1)
        left.plot(depth_axis, rms, style, ms=4, label=label)
        right.plot(depth_axis, grads, style, ms=4, label=label)
    for ax, what in (
        (left, "RMS of the conv's delta dL/d(output)"),
        (right, "L2 norm of the conv's weight gradient"),
    ):
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("conv layer (1 = next to the input)")
        ax.set_ylabel(what, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    fig.suptitle(
        f"{depth} conv blocks on 8x8 digits, at initialisation (one batch of 32)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "vanishing.png", dpi=110)


# ------------------------------------------------------------------ benchmark


def bench(out: Path, results: Path) -> None:
    """The benchmark's chart of a results.json."""
    from benchmarks import report

    report.chart(json.loads(results.read_text()), str(out / "bench.png"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="these figures")
    parser.add_argument("--quick", action="store_true", help="small settings")
    parser.add_argument(
        "--bench-results",
        type=Path,
        default=BENCH_RESULTS,
        help="the results.json bench.png is drawn from",
    )
    args = parser.parse_args(argv)
    names = set(args.only or FIGURES)
    args.out.mkdir(parents=True, exist_ok=True)
    if "conv_backward" in names:
        conv_backward(args.out)
    if "pool_backward" in names:
        pool_backward(args.out)
    if names & {"deltas", "grad_flow"}:
        main_job(args.out, args.quick, names)
    if "vanishing" in names:
        vanishing(args.out, args.quick)
    if "bench" in names:
        bench(args.out, args.bench_results)
    print(f"wrote {', '.join(sorted(names))} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

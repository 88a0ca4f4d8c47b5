"""Forward gradients (Baydin et al. 2022, "Gradients without backpropagation")
against backprop on the main job's digits model.

    python experiments/forward_gradient.py --out-dir runs/forward_gradient
    python experiments/forward_gradient.py --quick --out-dir /tmp/fg   # smoke run

The model is experiments/train.py's default (LeNet-style, width 6, second conv
3x3 on the 8x8 digits; Adam 3e-3 on a cosine schedule, batch 32, label smoothing
0.1, weight decay 1e-4), without the shift augmentation. Runs per seed:
- backprop: `grad="custom"` (the hand-written rules), --epochs epochs;
- forward gradient, K directions (`rules.forward_gradient(K)`, for each K of
  --directions): the same number of steps, and 5x the steps (a cosine schedule
  over the longer run).
Each run goes through `funcnn.fit` into its own run directory (resumed or read
back when the script runs again); the test set is only evaluated.

Time per step: every step function, compiled, on one fixed batch, in rounds that
interleave the variants (the machine may be shared); the median and the spread
(min..max of the rounds) of milliseconds per step. Also timed: backprop through
the ops' plain forward (`grad="autodiff"`), the forward the jvp runs.

Writes into --out-dir: results.json, table.md and accuracy.png (test accuracy
against steps).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from _datasets import available, prepare  # experiments/_datasets.py
from tqdm import tqdm

from funcnn import data, models, rules, serial
from funcnn.training import (
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from funcnn.training.run import fit, read_metrics

DATASETS = ("digits", "mnist5k")
LONGER = 5  # the forward gradient's longer runs: this many times the steps


def model_for(d: dict):
    hw = d["x_train"].shape[2:]
    kernel = 3 if min(hw) < 16 else 5  # as experiments/train.py
    layers = models.lenet_layers(
        d["num_classes"], input_hw=hw, width=6, second_kernel=kernel
    )
    return serial(*layers)


def grad_of(method: str):
    """The grad= value of "backprop", "backprop_autodiff" or "forward_gradient/K"."""
    if method == "backprop":
        return "custom"
    if method == "backprop_autodiff":  # timed only: the forward the jvp runs
        return "autodiff"
    return rules.forward_gradient(int(method.split("/")[1]))


def optimizer_for(total_steps: int):
    return make_optimizer(
        "adam", 3e-3, weight_decay=1e-4, schedule="cosine", total_steps=total_steps
    )


def train_one(method: str, d: dict, seed: int, epochs: int, out_dir: Path) -> dict:
    """One run; returns its record: test accuracy per epoch and steps."""
    model = model_for(d)
    x, y = d["x_train"], d["y_train"]
    spe = data.num_batches(len(x), 32)
    optimizer = optimizer_for(epochs * spe)
    state = create_train_state(model, (-1,) + x.shape[1:], optimizer, seed=seed)
    step = make_train_step(model, optimizer, grad=grad_of(method), label_smoothing=0.1)
    _, summary = fit(
        step,
        state,
        lambda epoch: data.batches(x, y, 32, seed=seed, epoch=epoch),
        epochs=epochs,
        steps_per_epoch=spe,
        eval_step=make_eval_step(model),
        eval_data=(d["x_test"], d["y_test"]),
        out_dir=out_dir,
        resume=out_dir.exists(),
        log_every=spe,
        keep=1,
        config={"method": method, "seed": seed, "epochs": epochs},
        progress=False,
        note=lambda text: None,
    )
    lines = [r for r in read_metrics(out_dir) if r["type"] == "epoch"]
    return {
        "method": method,
        "seed": seed,
        "epochs": epochs,
        "steps": [r["step"] for r in lines],
        "test_accuracy": [r["test_accuracy"] for r in lines],
        "train_loss": [r["loss"] for r in lines],
    }


def time_steps(d: dict, methods, rounds: int, steps: int) -> dict:
    """Milliseconds per compiled step of each method, interleaved in `rounds`."""
    model = model_for(d)
    optimizer = optimizer_for(1000)
    batch = (d["x_train"][:32], d["y_train"][:32])
    runs = {}
    for method in methods:
        step = make_train_step(
            model, optimizer, grad=grad_of(method), label_smoothing=0.1, donate=False
        )
        state = create_train_state(model, (-1,) + batch[0].shape[1:], optimizer)
        jax.block_until_ready(step(state, batch))  # compile
        runs[method] = (step, state)
    times = {m: [] for m in methods}
    for _ in range(rounds):
        for method, (step, state) in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = step(state, batch)
            jax.block_until_ready(out)
            times[method].append(1e3 * (time.perf_counter() - start) / steps)
    return {
        m: {"median_ms": float(np.median(t)), "min_ms": min(t), "max_ms": max(t)}
        for m, t in times.items()
    }


def table(records: list[dict], timing: dict, name: str) -> str:
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"{name}: final test accuracy, mean ± std over {len(seeds)} seeds (per seed)",
        "",
        "| method | steps | test accuracy | per seed |",
        "| --- | --- | --- | --- |",
    ]
    for key in dict.fromkeys((r["method"], r["epochs"]) for r in records):
        runs = [r for r in records if (r["method"], r["epochs"]) == key]
        acc = 100 * np.asarray([r["test_accuracy"][-1] for r in runs])
        std = acc.std(ddof=1) if len(acc) > 1 else 0.0
        lines.append(
            f"| {key[0]} | {runs[0]['steps'][-1]} | {acc.mean():.2f}% ± {std:.2f} | "
            f"{', '.join(f'{a:.2f}' for a in acc)} |"
        )
    lines += [
        "",
        f"{name}: ms per train step, batch 32 (median, min..max of the rounds)",
        "",
        "| method | ms / step |",
        "| --- | --- |",
    ]
    for method, t in timing.items():
        spread = f"{t['min_ms']:.2f}..{t['max_ms']:.2f}"
        lines.append(f"| {method} | {t['median_ms']:.2f} ({spread}) |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["dataset"] for r in records))
    fig = Figure(figsize=(6.5 * len(names), 4.5))
    FigureCanvasAgg(fig)
    for col, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), col + 1)
        rows = [r for r in records if r["dataset"] == name]
        for key in dict.fromkeys((r["method"], r["epochs"]) for r in rows):
            runs = [r for r in rows if (r["method"], r["epochs"]) == key]
            acc = 100 * np.asarray([r["test_accuracy"] for r in runs])
            steps = runs[0]["steps"]
            ax.plot(steps, acc.mean(0), label=f"{key[0]}, {steps[-1]} steps")
            ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("steps (batch 32)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name}: forward gradient vs backprop (band: min..max seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="runs/forward_gradient")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10, help="of backprop")
    p.add_argument("--directions", nargs="+", type=int, default=[1])
    p.add_argument("--rounds", type=int, default=7, help="timing rounds")
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds, args.epochs, args.rounds = ["digits"], [0], 1, 1
    if args.epochs < 1 or min(args.directions) < 1 or args.rounds < 1:
        p.error("--epochs, --directions and --rounds must be >= 1")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = available(args.datasets, "forward_gradient.py")
    fgs = [f"forward_gradient/{k}" for k in args.directions]
    plan = [("backprop", 1)] + [(m, f) for m in fgs for f in (1, LONGER)]
    records, timings, text = [], {}, ""
    start = time.perf_counter()
    with tqdm(total=len(names) * len(args.seeds) * len(plan), unit="run") as bar:
        for name in names:
            # --quick: a few steps per epoch (compiling is its cost)
            d = prepare(name, limit=256 if args.quick else None)
            runs = []
            for seed in args.seeds:
                for method, factor in plan:
                    epochs = factor * args.epochs
                    where = f"{name}-{method.replace('/', '')}-e{epochs}-seed{seed}"
                    run = train_one(method, d, seed, epochs, out / where)
                    runs.append(dict(run, dataset=name))
                    bar.update()
            timed = ["backprop"] + ([] if args.quick else ["backprop_autodiff"]) + fgs
            timings[name] = time_steps(d, timed, args.rounds, 5 if args.quick else 50)
            text += table(runs, timings[name], name) + "\n"
            records += runs
    seconds = time.perf_counter() - start
    (out / "table.md").write_text(text)
    results = {
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "runs": records,
        "ms_per_step": timings,
        "seconds": seconds,
        "machine": f"{platform.machine()}, {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(records, out / "accuracy.png")
    print(text, end="")
    print(f"{seconds:.0f} s; wrote {out}/results.json, table.md, accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

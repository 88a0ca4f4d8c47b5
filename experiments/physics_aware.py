"""Physics-aware training (Wright et al., Nature 2022) on simulated hardware.

    python experiments/physics_aware.py --out-dir runs/physics_aware
    python experiments/physics_aware.py --quick --out-dir /tmp/pat   # smoke run

In physics-aware training (PAT) the forward pass runs through the real, imperfect
system and the backward pass through a differentiable digital twin of it,
evaluated at the real inputs (`funcnn.Physical`). In-silico training trains the
twin alone and then deploys its parameters on the system. Two parts:

(a) PAT's toy (the example notebook of mcmahon-lab/Physics-Aware-Training): a
    chain of d layers y = 2 x^theta whose twin is 2.01 x^theta, one theta per
    layer, from x0 = 1.5 and theta = 1.1. The target is the system's output at
    theta = 1.12 in every layer; the loss is (log y - log target)^2, trained by
    gradient descent with a step of 0.25 / |d log y / d theta|^2 (so every depth
    takes steps of the same size) for --toy-steps steps. For each depth it
    reports the forward gap |twin - system| / system at the start, and the
    system's relative distance to the target after PAT and after in-silico
    training; "reached" means within --tolerance.

(b) An image task: the main job's LeNet-style CNN whose conv layers run on a
    simulated analog device. The device multiplies every weight by a fixed gain
    1 + 0.1 m eps (eps ~ N(0, 1), drawn once per device and layer), saturates its
    outputs, s tanh(y / s) with s = 3 / m, and adds read noise of std 0.1 m to
    them at every call; the twin is the plain conv. m, the mismatch scale, is
    swept over --levels (m = 1: 10% gain errors). Trained three ways, each seed
    a different initialisation and device: ideal (the twin, evaluated on the
    twin), in silico (the same twin parameters, evaluated on the device) and
    PAT (trained and evaluated on the device). Adam 3e-3 on a cosine schedule,
    weight decay 1e-4, batch 32, no augmentation; device evaluations draw fresh
    read noise. Each training run goes through `funcnn.fit` into its own run
    directory (resumed or read back when the script runs again).

Writes into --out-dir: results.json (every number, the settings and the
seconds), table.md (both parts) and pat.png (the toy's gaps and a training
curve, and the image accuracy against m).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _datasets import available, prepare  # experiments/_datasets.py
from tqdm import tqdm

import funcnn
from funcnn import data, models, serial
from funcnn.training import (
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from funcnn.training.run import fit, read_metrics

DEPTHS = (1, 2, 5, 10, 15, 20)
LEVELS = (1.0, 2.0, 4.0)
PARTS = ("gain", "saturation", "noise")  # the device's imperfections
DATASETS = ("digits", "mnist5k")
X0, THETA0, THETA_TARGET = 1.5, 1.1, 1.12

# ------------------------------------------------------------------ (a) the toy


def power(scale: float) -> funcnn.Layer:
    """`scale * x ** theta`, with theta initialised to THETA0."""

    def init(key, shape):
        del key
        return shape, {"theta": jnp.asarray(THETA0, jnp.float32)}, {}

    def apply(params, state, x, **_):
        return scale * x ** params["theta"], state

    return funcnn.Layer(init, apply, "power")


def toy_system(params, x):
    return 2.0 * x ** params["theta"]


def toy(depth: int, steps: int) -> dict:
    """PAT and in-silico training of the depth-`depth` chain; see the docstring."""
    physical = serial(*[funcnn.Physical(toy_system, power(2.01)) for _ in range(depth)])
    in_silico = serial(*[power(2.01) for _ in range(depth)])
    _, p0, state = physical.init(jax.random.key(0), (1,))
    x = jnp.asarray([X0], jnp.float32)

    def out(model, p):
        return model.apply(p, state, x)[0][0]

    target = out(physical, jax.tree_util.tree_map(lambda t: t * 0 + THETA_TARGET, p0))
    slope = jax.grad(lambda p: jnp.log(out(in_silico, p)))(p0)
    lr = 0.25 / sum(float(jnp.sum(g**2)) for g in jax.tree_util.tree_leaves(slope))
    gap = abs(float(out(in_silico, p0)) / float(out(physical, p0)) - 1)
    record = {"depth": depth, "forward_gap": gap, "target": float(target)}
    for name, model in (("pat", physical), ("in_silico", in_silico)):

        @jax.jit
        def step(p, model=model):
            loss = lambda p: (jnp.log(out(model, p)) - jnp.log(target)) ** 2  # noqa: E731
            g = jax.grad(loss)(p)
            p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
            return p, abs(out(physical, p) / target - 1)

        p, errors = p0, []
        for _ in range(steps):
            p, err = step(p)
            errors.append(float(err))
        record[f"{name}_error"] = errors[-1]
        record[f"{name}_curve"] = errors
    return record


# --------------------------------------------------------- (b) the image task


def analog_device(
    twin: funcnn.Layer, level: float, device_key, parts: str = "all"
) -> Callable:
    """The system of one conv layer on the analog device at mismatch `level`,
    with the imperfections named in `parts` ("all", or "+"-joined among
    PARTS)."""
    on = set(PARTS if parts == "all" else parts.split("+"))
    gain_std = 0.1 * level if "gain" in on else 0.0
    noise_std = 0.1 * level if "noise" in on else 0.0
    saturation = 3.0 / level

    def system(params, x, key=None):
        w = params["w"]
        gain = 1.0 + gain_std * jax.random.normal(device_key, w.shape, w.dtype)
        y, _ = twin.apply(dict(params, w=w * gain), {}, x, grad="autodiff")
        if "saturation" in on:
            y = saturation * jnp.tanh(y / saturation)
        if key is not None and noise_std:
            y = y + noise_std * jax.random.normal(key, y.shape, y.dtype)
        return y

    return system


def check_parts(spec: str) -> str:
    if spec != "all" and not set(spec.split("+")) <= set(PARTS):
        raise argparse.ArgumentTypeError(
            f"expected 'all' or names among {PARTS} joined by '+', got {spec!r}"
        )
    return spec


def lenet(
    num_classes: int, input_hw, level: float | None, device_seed: int, parts="all"
):
    """The twin model (level None) or the model with its convs on the device."""
    layers = models.lenet_layers(
        num_classes,
        input_hw=input_hw,
        width=2,
        second_kernel=3 if min(input_hw) < 16 else 5,
    )
    if level is None:
        return serial(*layers)
    base = jax.random.key(device_seed)
    return serial(
        *[
            funcnn.Physical(
                analog_device(a, level, jax.random.fold_in(base, i), parts), a
            )
            if a.name == "conv"
            else a
            for i, a in enumerate(layers)
        ]
    )


def device_eval_step(model):
    """`make_eval_step`'s sums, with a read-noise key: each evaluation draws its
    noise from the state's key (one draw per batch position)."""
    loss_of = jax.vmap(lambda o, t: funcnn.softmax_cross_entropy(o[None], t[None]))

    @jax.jit
    def step(state, batch):
        x, y, mask = batch
        key = jax.random.fold_in(state.key, 7)
        out, _ = model.apply(state.params, state.model_state, x, key=key)
        hits = (jnp.argmax(out, -1) == y).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(loss_of(out, y) * mask),
            "correct": jnp.sum(hits * mask),
            "count": jnp.sum(mask),
        }

    return step


def train(model, d: dict, seed: int, epochs: int, out_dir: Path, eval_step) -> tuple:
    """Trains `model` with fit; returns (final state, test accuracy per epoch)."""
    x, y = d["x_train"], d["y_train"]
    spe = data.num_batches(len(x), 32)
    optimizer = make_optimizer(
        "adam", 3e-3, weight_decay=1e-4, schedule="cosine", total_steps=epochs * spe
    )
    state = create_train_state(model, (-1,) + x.shape[1:], optimizer, seed=seed)
    state, _ = fit(
        make_train_step(model, optimizer),
        state,
        lambda epoch: data.batches(x, y, 32, seed=seed, epoch=epoch),
        epochs=epochs,
        steps_per_epoch=spe,
        eval_step=eval_step,
        eval_data=(d["x_test"], d["y_test"]),
        out_dir=out_dir,
        resume=out_dir.exists(),
        log_every=spe,
        keep=1,
        config={"seed": seed, "epochs": epochs},
        progress=False,
        note=lambda text: None,
    )
    curve = [r["test_accuracy"] for r in read_metrics(out_dir) if r["type"] == "epoch"]
    return state, curve


def image_task(name, d, sweep, seeds, epochs, out: Path, bar) -> list[dict]:
    """Ideal, in-silico and PAT accuracies per (parts, level) of `sweep` and
    seed."""
    hw, k = d["x_train"].shape[2:], d["num_classes"]
    records = []
    for seed in seeds:
        twin = lenet(k, hw, None, seed)
        twin_state, ideal = train(
            twin, d, seed, epochs, out / f"{name}-twin-seed{seed}", make_eval_step(twin)
        )
        bar.update()
        for parts, level in sweep:
            device = lenet(k, hw, level, 1000 + seed, parts)
            evaluate = device_eval_step(device)
            in_silico = funcnn.evaluate(
                evaluate, twin_state, d["x_test"], d["y_test"], 500
            )
            _, pat = train(
                device,
                d,
                seed,
                epochs,
                out / f"{name}-pat-{parts}-m{level:g}-seed{seed}",
                evaluate,
            )
            bar.update()
            records.append(
                {
                    "dataset": name,
                    "seed": seed,
                    "parts": parts,
                    "level": level,
                    "ideal": ideal[-1],
                    "in_silico": in_silico["accuracy"],
                    "pat": pat[-1],
                    "pat_curve": pat,
                    "ideal_curve": ideal,
                }
            )
    return records


# ------------------------------------------------------------------ the report


def table(toy_records: list[dict], image: list[dict], tolerance: float) -> str:
    """Markdown: the toy by depth, then the image task by data set and level."""

    def pct(v):
        return f"{100 * v:.3g}%"

    lines = [
        f"PAT's toy: relative distance of the system's output to the target "
        f"(reached: within {pct(tolerance)})",
        "",
        "| depth | forward gap at start | in silico | PAT |",
        "| --- | --- | --- | --- |",
    ]
    for r in toy_records:
        marks = {
            k: ("reached" if r[f"{k}_error"] <= tolerance else "missed")
            for k in ("in_silico", "pat")
        }
        lines.append(
            f"| {r['depth']} | {pct(r['forward_gap'])} | "
            f"{pct(r['in_silico_error'])} ({marks['in_silico']}) | "
            f"{pct(r['pat_error'])} ({marks['pat']}) |"
        )
    for name, parts in dict.fromkeys((r["dataset"], r["parts"]) for r in image):
        rows = [r for r in image if (r["dataset"], r["parts"]) == (name, parts)]
        seeds = sorted({r["seed"] for r in rows})
        which = "" if parts == "all" else f", device with {parts} only"
        lines += [
            "",
            f"{name}{which}: test accuracy, mean ± std over {len(seeds)} seeds "
            "(per seed)",
            "",
            "| mismatch m | ideal (twin on twin) | in silico (twin on device) | "
            "PAT (on device) |",
            "| --- | --- | --- | --- |",
        ]
        for level in dict.fromkeys(r["level"] for r in rows):
            at = [r for r in rows if r["level"] == level]
            cells = []
            for key in ("ideal", "in_silico", "pat"):
                acc = 100 * np.asarray([r[key] for r in at])
                std = acc.std(ddof=1) if len(acc) > 1 else 0.0
                each = ", ".join(f"{a:.1f}" for a in acc)
                cells.append(f"{acc.mean():.1f}% ± {std:.1f} ({each})")
            lines.append(f"| {level:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(
    toy_records: list[dict], image: list[dict], tolerance: float, path: Path
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["dataset"] for r in image if r["parts"] == "all"))
    fig = Figure(figsize=(5 * (2 + len(names)), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 + len(names), 1)
    depths = [r["depth"] for r in toy_records]
    for key, label, style, color in (
        ("forward_gap", "forward gap |twin/system - 1| at start", "--", "k"),
        ("in_silico_error", "in silico: distance to target", "o-", "C1"),
        ("pat_error", "PAT: distance to target", "s-", "C2"),
    ):
        values = [max(r[key], 1e-9) for r in toy_records]
        ax.semilogy(depths, values, style, color=color, label=label)
    ax.axhline(tolerance, color="gray", lw=0.8, label="tolerance")
    ax.set_xlabel("depth d (layers of 2x^theta; twin 2.01x^theta)")
    ax.set_ylabel("relative error")
    ax.set_title("(a) PAT's toy: after training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2 + len(names), 2)
    deepest = toy_records[-1]
    for key, label, color in (
        ("in_silico_curve", "in silico", "C1"),
        ("pat_curve", "PAT", "C2"),
    ):
        ax.semilogy(np.maximum(deepest[key], 1e-9), color=color, label=label)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("|system output / target - 1|")
    ax.set_title(f"(a) training at depth {deepest['depth']}")
    ax.grid(alpha=0.3)
    ax.legend()
    for col, name in enumerate(names):
        ax = fig.add_subplot(1, 2 + len(names), 3 + col)
        rows = [r for r in image if r["dataset"] == name and r["parts"] == "all"]
        levels = list(dict.fromkeys(r["level"] for r in rows))
        for key, label, color in (
            ("ideal", "ideal (twin on twin)", "C0"),
            ("in_silico", "in silico (twin on device)", "C1"),
            ("pat", "PAT (on device)", "C2"),
        ):
            acc = np.asarray(
                [[100 * r[key] for r in rows if r["level"] == lv] for lv in levels]
            )
            ax.plot(levels, acc.mean(1), "o-", color=color, label=label)
            ax.fill_between(levels, acc.min(1), acc.max(1), color=color, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{lv:g}" for lv in levels])
        ax.set_xlabel("mismatch m (gain std 0.1m, noise 0.1m, saturation 3/m)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"(b) {name}: mean, band = min..max seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="runs/physics_aware")
    p.add_argument("--depths", nargs="+", type=int, default=list(DEPTHS))
    p.add_argument("--toy-steps", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    p.add_argument(
        "--parts",
        nargs="+",
        type=check_parts,
        default=["all"],
        help="device imperfections: 'all', or some of gain, saturation, noise "
        "joined by '+'; each value is its own sweep over --levels",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.depths, args.toy_steps = [1, 5], 20
        args.datasets, args.levels, args.seeds, args.epochs = ["digits"], [2.0], [0], 1
    if min(args.depths) < 1 or args.toy_steps < 1 or args.epochs < 1:
        p.error("--depths, --toy-steps and --epochs must be >= 1")
    if min(args.levels) <= 0:
        p.error("--levels must be > 0 (m = 0 is the twin itself: the ideal run)")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = available(args.datasets, "physics_aware.py")
    start = time.perf_counter()
    sweep = [(parts, level) for parts in args.parts for level in args.levels]
    total = len(args.depths) + len(names) * len(args.seeds) * (1 + len(sweep))
    with tqdm(total=total, desc="physics_aware", unit="run") as bar:
        toy_records = []
        for depth in args.depths:
            toy_records.append(toy(depth, args.toy_steps))
            bar.update()
        image = []
        for name in names:
            # --quick: a few steps (compiling is its cost)
            d = prepare(name, limit=256 if args.quick else None)
            image += image_task(name, d, sweep, args.seeds, args.epochs, out, bar)
    seconds = time.perf_counter() - start
    text = table(toy_records, image, args.tolerance)
    (out / "table.md").write_text(text)
    settings = {k: v for k, v in vars(args).items() if k != "out_dir"}
    results = {
        "settings": settings,
        "toy": toy_records,
        "image": image,
        "seconds": seconds,
        "machine": f"{platform.machine()}, {jax.devices()[0].platform}, "
        f"jax {jax.__version__}",
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(toy_records, image, args.tolerance, out / "pat.png")
    print(text, end="")
    print(f"{seconds:.0f} s; wrote {out}/results.json, table.md, pat.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

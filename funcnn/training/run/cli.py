"""Command-line flags for scripts built on `fit`, and their checks.

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--lr", type=number(float, above=0), default=3e-3, help="...")
    add_run_arguments(parser)
    args = parse_run_args(parser, argv, free=("epochs",))
    run = open_run_dir(args)             # before loading data: a bad --out-dir
    state, summary = fit(..., out_dir=run, **fit_options(args))   # fails first

With `--resume`, the run's config.json supplies the defaults, so a run resumes
with its own settings; flags given explicitly still win, except the `locked`
ones, which must not change. A bad value exits with 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn.training.run.errors import RunDirError, RunError
from funcnn.training.run.rundir import RunDir, new_run_dir, read_config

# Flags of a run that a resumed run does not take from config.json.
PER_INVOCATION = ("out_dir", "resume", "resume_step", "max_steps", "allow_data_change")
# The other flags of `add_run_arguments`: taken from config.json, free to change.
RUN_FLAGS = ("log_every", "keep", "eval_batch_size", "no_progress")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the default of every flag that takes a value, once: appended to
    its help unless the help already says "default". Every flag needs a help
    text, or argparse shows nothing for it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.nargs == 0:  # on/off switches
            return text
        return f"{text} (default: %(default)s)".strip()


def number(
    kind: type = float,
    *,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Callable[[str], Any]:
    """An argparse `type` for a finite int or float within bounds.

    `number(float, above=0)` accepts 0.1 but refuses 0, -1, inf and nan with
    "expected a finite number > 0, got 'inf'".
    """
    bounds = [
        f"{op} {bound:g}"
        for op, bound in ((">=", at_least), (">", above), ("<", below))
        if bound is not None
    ]
    what = f"{'an int' if kind is int else 'a finite number'} " + " and ".join(bounds)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (
            value is None
            or not math.isfinite(value)
            or (at_least is not None and value < at_least)
            or (above is not None and value <= above)
            or (below is not None and value >= below)
        ):
            raise argparse.ArgumentTypeError(f"expected {what.strip()}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the flags of the run loop (returned for chaining): --out-dir,
    --resume, --resume-step, --allow-data-change, --max-steps, --log-every,
    --keep, --eval-batch-size, --no-progress."""
    group = parser.add_argument_group("the run (funcnn.fit)")
    add = group.add_argument
    add("--out-dir", help="run directory (default: a new runs/<timestamp>)")
    add("--resume", action="store_true", help="continue the run in --out-dir")
    add(
        "--resume-step",
        type=number(int, at_least=0),
        metavar="STEP",
        help="continue from this checkpoint step (implies --resume; default: the "
        "newest intact one)",
    )
    add(
        "--allow-data-change",
        action="store_true",
        help="resume even if the training data differ from the run's",
    )
    add(
        "--max-steps",
        type=number(int, at_least=1),
        help="stop (and save) at this step (default: run every epoch)",
    )
    add(
        "--log-every",
        type=number(int, at_least=1),
        default=10,
        help="steps per metrics line",
    )
    add("--keep", type=number(int, at_least=1), default=3, help="checkpoints kept")
    add(
        "--eval-batch-size",
        type=number(int, at_least=1),
        default=500,
        help="examples per evaluation call",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_run_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    free: Iterable[str] = (),
) -> argparse.Namespace:
    """Parses `argv`; with --resume, under the defaults of the run's config.json.

    A resumed run keeps its settings: every flag of `parser` must keep its
    stored value, except the run flags of `add_run_arguments` and those listed
    in `free` (argparse dest names, e.g. "epochs").

    Raises:
        SystemExit(2): with a one-line message for --resume without --out-dir, a
            missing or unreadable config.json, or a changed setting.
    """
    args = parser.parse_args(argv)
    args.resume = args.resume or args.resume_step is not None
    if not args.resume:
        return args
    if not args.out_dir:
        parser.error("--resume needs --out-dir, the run directory to continue")
    try:
        stored = read_config(Path(args.out_dir))
    except RunError as err:
        parser.error(f"--resume: {err}")
    names = set(vars(parser.parse_args([]))) - set(PER_INVOCATION)
    parser.set_defaults(**{k: v for k, v in stored.items() if k in names})
    args = parser.parse_args(argv)
    args.resume = True
    locked = names - set(free) - set(RUN_FLAGS)
    changed = [
        k for k in sorted(locked) if k in stored and getattr(args, k) != stored[k]
    ]
    if changed:
        diffs = [f"{k}={getattr(args, k)!r} (run: {stored[k]!r})" for k in changed]
        parser.error(
            "--resume keeps the run's settings, but these differ from "
            f"{args.out_dir}/config.json: " + ", ".join(diffs)
        )
    return args


def open_run_dir(args: argparse.Namespace, note: Callable[[str], None]) -> RunDir:
    """The run directory of `args` (a new runs/<timestamp> without --out-dir),
    opened and locked. Raises `RunDirError` when it cannot be used."""

    if args.out_dir is None and jax.process_count() > 1:
        raise RunDirError(
            "several processes need --out-dir, so that they share one run directory"
        )
    path = args.out_dir or new_run_dir()
    return RunDir(path, resume=args.resume, keep=args.keep, note=note)


def check_dataset(ds, batch_size: int) -> None:
    """Checks a `funcnn.data.Dataset` on the host before training.

    Raises:
        RunError: for an empty training or test set, labels outside
            `[0, num_classes)` (they would give NaN steps or train the wrong
            class), or fewer training images than `batch_size`.
    """
    for part, x, y in (
        ("training", ds.x_train, ds.y_train),
        ("test", ds.x_test, ds.y_test),
    ):
        if len(x) == 0:
            raise RunError(
                f"--dataset {ds.name} has no {part} images; check that its {part} "
                "files (in --data-dir) hold images"
            )
        y = np.asarray(y)
        bad = np.flatnonzero((y < 0) | (y >= ds.num_classes))
        if bad.size:
            raise RunError(
                f"expected {part} labels in [0, {ds.num_classes}), got {y[bad[0]]} "
                f"at index {bad[0]} ({bad.size} such labels); fix the labels of "
                f"--dataset {ds.name}"
            )
    if len(ds.x_train) < batch_size:
        raise RunError(
            f"--batch-size {batch_size} exceeds the {len(ds.x_train)} training images"
        )


def fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of `fit` that the run flags set."""
    return {
        "resume_step": args.resume_step,
        "max_steps": args.max_steps,
        "log_every": args.log_every,
        "eval_batch_size": args.eval_batch_size,
        "allow_data_change": args.allow_data_change,
        "progress": not args.no_progress,
    }


def printer(prog: str) -> Callable[[str], None]:
    """A `note` function that prints "prog: message" to stderr."""
    return lambda message: print(f"{prog}: {message}", file=sys.stderr)

"""Gradient-check report: custom backward rules vs autodiff vs finite differences.

Runs `funcnn.gradcheck` in float64 on each op under several configurations and on
two whole models with their loss, prints one error table per check, and exits
non-zero if any check fails.

    python experiments/gradcheck_report.py [--checks ops lenet vgg]
        [--max-coords 16] [--directions 2] [--data digits|random] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import numpy as np

import funcnn

# Shapes and arguments for each op check: (title, op, input shapes, op kwargs,
# autodiff?). Arrays are drawn from a seeded normal distribution.
OP_CASES = [
    ("conv2d 3x3, padding 1", funcnn.conv2d, [(2, 3, 7, 7), (4, 3, 3, 3), (4,)],
     dict(padding=1), True),
    ("conv2d stride (2, 1), dilation (2, 1), groups 2, asymmetric padding",
     funcnn.conv2d, [(2, 4, 9, 8), (6, 2, 3, 2), (6,)],
     dict(stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(2, 1), groups=2), True),
    # jax.grad of lax.conv_general_dilated aborts the whole process on XLA:CPU for
    # this configuration, so the custom rule is compared with FD only.
    ("conv2d stride 2, padding ((1, 2), (1, 2)), dilation (1, 2) "
     "[autodiff aborts XLA:CPU here: custom vs FD only]",
     funcnn.conv2d, [(1, 1, 6, 2), (1, 1, 2, 3)],
     dict(stride=2, padding=((1, 2), (1, 2)), dilation=(1, 2)), False),
    ("max_pool2d 2x2, stride 2", funcnn.max_pool2d, [(2, 3, 6, 6)],
     dict(window=2), True),
    ("max_pool2d 3x3, stride 2, padding 1, ceil_mode", funcnn.max_pool2d,
     [(2, 2, 8, 7)], dict(window=3, stride=2, padding=1, ceil_mode=True), True),
    ("max_pool2d 3x3, dilation 2, stride 1, padding 2 (dilated)", funcnn.max_pool2d,
     [(2, 2, 7, 7)], dict(window=3, stride=1, padding=2, dilation=2), True),
    ("avg_pool2d 3x3, stride 2, padding 1, ceil_mode, count_include_pad=False",
     funcnn.avg_pool2d, [(2, 2, 8, 7)],
     dict(window=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     True),
]  # fmt: skip


CHECKS = ("ops", "lenet", "vgg")


def op_reports(options: dict):
    """Yields a report per entry of OP_CASES; options go to `funcnn.gradcheck`."""
    rng = np.random.default_rng(options["seed"])
    for title, op, shapes, kwargs, autodiff in OP_CASES:
        arrays = [rng.standard_normal(shape) for shape in shapes]
        kwargs = dict(kwargs)
        window = kwargs.pop("window", None)
        args = arrays if window is None else [*arrays, window]
        yield funcnn.gradcheck(
            op, *args, kwargs=kwargs, autodiff=autodiff, title=title, **options
        )


def model_reports(models, data: str, options: dict):
    """Yields a report per model named in `models` ("lenet", "vgg")."""
    seed = options["seed"]
    if "lenet" in models:
        if data == "digits":
            digits = funcnn.data.load_digits(seed=seed)
            x, y = digits.x_train[:4], digits.y_train[:4]
        else:
            rng = np.random.default_rng(seed)
            x, y = rng.uniform(size=(4, 1, 8, 8)), rng.integers(0, 10, size=4)
        yield funcnn.gradcheck(
            funcnn.lenet(input_hw=(8, 8)),
            x,
            labels=np.asarray(y, np.int32),
            title=f"lenet(input_hw=(8, 8)) on {len(x)} {data} images, cross-entropy",
            **options,
        )
    if "vgg" in models:
        rng = np.random.default_rng(seed + 1)
        x, y = rng.standard_normal((2, 3, 16, 16)), rng.integers(0, 10, size=2)
        yield funcnn.gradcheck(
            funcnn.vgg_small(),
            x,
            labels=np.asarray(y, np.int32),
            train=True,
            title="vgg_small() on 2 random 3x16x16 images, cross-entropy, training "
            "mode (BatchNorm batch statistics, one fixed Dropout mask)",
            **options,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--max-coords",
        type=int,
        default=16,
        help="finite-difference coordinates per leaf (all of a smaller leaf)",
    )
    parser.add_argument(
        "--directions", type=int, default=2, help="random directions per leaf"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        choices=("digits", "random"),
        default="digits",
        help="LeNet's inputs: scikit-learn's 8x8 digits or random images",
    )
    parser.add_argument(
        "--checks",
        nargs="+",
        choices=CHECKS,
        default=list(CHECKS),
        help="which checks to run (default: all)",
    )
    args = parser.parse_args(argv)
    options = dict(
        max_coords_per_leaf=args.max_coords, directions=args.directions, seed=args.seed
    )
    start = time.perf_counter()
    reports = []
    checks = op_reports(options) if "ops" in args.checks else iter(())
    models = model_reports(args.checks, args.data, options)
    for report in itertools.chain(checks, models):
        print(report, end="\n\n", flush=True)
        reports.append(report)
    failed = [r.title for r in reports if not r.ok]
    skipped = sum(r.num_nonsmooth for r in reports)
    print(
        f"{len(reports)} gradient checks, {len(failed)} failed, {skipped} non-smooth "
        f"probes skipped, {time.perf_counter() - start:.1f} s "
        f"(jax {jax.__version__}, {jax.default_backend()})"
    )
    for title in failed:
        print(f"FAILED: {title}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The max pool of several source trees side by side: forward alone and forward +
backward, in alternating fresh processes.

    git worktree add /tmp/old072 072c46b
    python -m benchmarks.pool_versions --tree old=/tmp/old072 --tree new=.

Each round starts one worker process per tree, in turn (old, new, old, new, ...),
with that tree first on the import path, so every version runs its own funcnn and
load drifting on a shared machine reaches all of them alike. Inside a worker the
variants run round-robin after warm-up; one sample is the mean of `--block`
back-to-back calls, which keeps Python's dispatch jitter out of sub-millisecond
figures. A variant a tree cannot run (a keyword it does not know, such as layout
or return_indices before they existed) is shown as "-".

Variants: 2x2/2 and 3x3/2 windows on `--shape` (NCHW; the NHWC input is its
transpose), custom and autodiff rules, NCHW and NHWC, and return_indices=True;
"fwd" is a jit of the op alone (inference: no index kept), "fwd+bwd" a jit of
`jax.vjp` and its pullback applied to a fixed random cotangent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (name, window, stride, layout, return_indices, grads)
VARIANTS = (
    ("2x2/2", 2, 2, "NCHW", False, ("custom", "autodiff")),
    ("2x2/2 NHWC", 2, 2, "NHWC", False, ("custom",)),
    ("2x2/2 indices", 2, 2, "NCHW", True, ("custom",)),
    ("2x2/2 NHWC indices", 2, 2, "NHWC", True, ("custom",)),
    ("3x3/2", 3, 2, "NCHW", False, ("custom", "autodiff")),
    ("3x3/2 NHWC", 3, 2, "NHWC", False, ("custom",)),
    ("3x3/2 indices", 3, 2, "NCHW", True, ("custom",)),
)
PARTS = ("fwd", "fwd+bwd")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tree",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a source tree (holding funcnn/) to time; repeat for each version",
    )
    p.add_argument("--rounds", type=int, default=4, help="processes per tree")
    p.add_argument("--repeats", type=int, default=30, help="samples per round")
    p.add_argument("--block", type=int, default=5, help="calls per sample")
    p.add_argument("--shape", default="64,32,32,32", help="N,C,H,W of the input")
    p.add_argument("--json", default=None, help="also write the samples here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------- worker side


def _variant_fns(shape) -> dict:
    import jax

    from funcnn import ops

    x_nchw = jax.random.normal(jax.random.PRNGKey(0), shape)
    fns = {}
    for name, window, stride, layout, indices, grads in VARIANTS:
        x = x_nchw if layout == "NCHW" else x_nchw.transpose(0, 2, 3, 1)
        extra = {} if layout == "NCHW" else {"layout": layout}
        if indices:
            extra["return_indices"] = True
        for grad in grads:

            def pool(x, window=window, stride=stride, grad=grad, extra=extra):
                out = ops.max_pool2d(x, window, stride=stride, grad=grad, **extra)
                return out[0] if extra.get("return_indices") else out

            def full(x, window=window, stride=stride, grad=grad, extra=extra):
                return ops.max_pool2d(x, window, stride=stride, grad=grad, **extra)

            try:
                y = jax.eval_shape(pool, x)
            except TypeError:  # this tree's max_pool2d lacks a keyword
                continue
            g = jax.random.normal(jax.random.PRNGKey(1), y.shape, y.dtype)

            def fwdbwd(x, g, pool=pool):
                y, pullback = jax.vjp(pool, x)
                return y, pullback(g)

            fwd, both = jax.jit(full), jax.jit(fwdbwd)
            fns[f"{name}|fwd|{grad}"] = lambda f=fwd, x=x: f(x)
            fns[f"{name}|fwd+bwd|{grad}"] = lambda f=both, x=x, g=g: f(x, g)
    return fns


def _worker(args) -> None:
    import jax

    fns = _variant_fns(tuple(int(v) for v in args.shape.split(",")))
    for _ in range(2):
        for fn in fns.values():
            jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(args.block):
                out = fn()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / args.block)
    print(json.dumps(samples))


# ----------------------------------------------------------------- parent side


def _run_worker(args, root: Path) -> dict[str, list[float]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)  # this tree's funcnn, and no other
    # Run as a script: `-m benchmarks...` would find the tree's own benchmarks/.
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker",
           "--tree", "-", "--repeats", str(args.repeats), "--block",
           str(args.block), "--shape", args.shape]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, cwd=root, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmarks.pool_versions: worker for {root} failed (exit "
            f"{proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(seconds: list[float] | None) -> str:
    import numpy as np

    if not seconds:
        return "-"
    q1, med, q3 = np.percentile(np.asarray(seconds) * 1e3, [25, 50, 75])
    return f"{med:.2f} ({q1:.2f}-{q3:.2f})"


def table(pooled: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: one row per variant, part and rule; one column per tree, each the
    median ms with the inter-quartile range."""
    names = list(pooled)
    keys: list[str] = []
    for samples in pooled.values():
        keys += [k for k in samples if k not in keys]
    rows = ["| max_pool2d | part | grad | " + " | ".join(names) + " |",
            "|---|---|---|" + "---:|" * len(names)]  # fmt: skip
    for key in keys:
        variant, part, grad = key.split("|")
        cells = [_cell(pooled[n].get(key)) for n in names]
        rows.append(f"| {variant} | {part} | {grad} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    trees = dict(t.split("=", 1) for t in args.tree)
    pooled: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for _ in range(args.rounds):
        for name, path in trees.items():
            for key, seconds in _run_worker(args, Path(path).resolve()).items():
                pooled[name].setdefault(key, []).extend(seconds)
    text = (
        f"max_pool2d on {args.shape} (N,C,H,W), {args.rounds} round(s) of "
        f"{args.repeats} samples per tree, each the mean of {args.block} calls; "
        f"median ms (inter-quartile range); {os.cpu_count()} CPUs visible, load "
        f"average {os.getloadavg()[0]:.2f} at the end.\n\n{table(pooled)}"
    )
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(pooled))
    return {"samples": pooled, "markdown": text}


if __name__ == "__main__":
    main()

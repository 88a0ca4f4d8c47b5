"""Layout benchmark: the VGG-style train step and the overlapping max pool, in NCHW
and NHWC, custom and autodiff rules, with and without XLA:CPU's YNN convolution
fusion flag.

    python -m benchmarks.layout [--quick] [--repeats N] [--rounds R] [--json PATH]

XLA reads XLA_FLAGS once, when jax starts, so each flag setting runs in its own
worker process. The workers alternate (off, on, off, on, ...: `--rounds`) and
their samples are pooled, so that load drifting on a shared machine reaches both
settings alike; inside a worker the variants run round-robin. The table gives the
median and inter-quartile range of each variant, in milliseconds, and its ratio
to the NCHW custom-rule step without the flag.

Train step: `funcnn.models.vgg_small(batchnorm=False, dropout=0.0, layout=...)`,
batch 128 of 3x32x32 (NHWC: 32x32x3), adam, built by `benchmarks.jax_side`
exactly as the main benchmark builds its "vgg_nobn" step. Max pool: 3x3 window,
stride 2, on 128x32x32x32, forward and backward in one jit; for the custom rule
also apart: "fwd" is the op alone (as in inference: no index is computed) and
"bwd" the pullback of a saved index.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FLAG = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
LAYOUTS = ("NCHW", "NHWC")
GRADS = ("custom", "autodiff")
ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="batch 16, 3 repeats, 1 round, train steps with the custom rules only",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per round")
    p.add_argument("--rounds", type=int, default=None, help="worker pairs (default 2)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128)")
    p.add_argument("--json", default=None, help="also write the samples here")
    p.add_argument("--timeout", type=float, default=1800, help="per worker, s")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


# ----------------------------------------------------------------- worker side


def _round_robin(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each zero-argument callable, `repeats` times, interleaved."""
    import jax

    for _ in range(warmup):
        for fn in fns.values():
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def _train_steps(batch: int, grads: tuple[str, ...]) -> dict:
    from benchmarks import jax_side
    from funcnn import models

    fns = {}
    for layout in LAYOUTS:
        shape = (batch, 3, 32, 32) if layout == "NCHW" else (batch, 32, 32, 3)
        model = models.vgg_small(10, batchnorm=False, dropout=0.0, layout=layout)
        data = jax_side.train_batch(shape)
        for grad in grads:
            step, state = jax_side.make_step(model, grad, shape)
            box = {"state": state}

            def run(step=step, box=box, data=data):
                box["state"], metrics = step(box["state"], data)
                return metrics

            fns[f"train {layout} {grad}"] = run
    return fns


def _max_pools(batch: int) -> dict:
    import jax

    from funcnn import ops

    fns = {}
    for layout in LAYOUTS:
        shape = (batch, 32, 32, 32)
        out = (batch, 32, 15, 15)
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        g = jax.random.normal(jax.random.PRNGKey(1), out)
        if layout == "NHWC":
            x, g = x.transpose(0, 2, 3, 1), g.transpose(0, 2, 3, 1)
        for grad in GRADS:

            def pool(x, grad=grad, layout=layout):
                return ops.max_pool2d(x, 3, stride=2, layout=layout, grad=grad)

            def fwdbwd(x, g, pool=pool):
                y, vjp = jax.vjp(pool, x)
                return y, vjp(g)

            both = jax.jit(fwdbwd)
            fns[f"maxpool {layout} {grad} fwd+bwd"] = lambda f=both, x=x, g=g: f(x, g)
            if grad == "custom":
                fwd = jax.jit(pool)
                _, vjp = jax.vjp(pool, x)
                bwd = jax.jit(lambda vjp, g: vjp(g))
                fns[f"maxpool {layout} {grad} fwd"] = lambda f=fwd, x=x: f(x)
                fns[f"maxpool {layout} {grad} bwd"] = lambda f=bwd, v=vjp, g=g: f(v, g)
    return fns


def _worker(args) -> None:
    samples = {}
    # --quick times only the custom-rule steps: each step is a compile of its own.
    grads = ("custom",) if args.quick else GRADS
    samples.update(_round_robin(_train_steps(args.batch, grads), args.repeats))
    samples.update(_round_robin(_max_pools(args.batch), args.repeats))
    print(json.dumps(samples))


# ----------------------------------------------------------------- parent side


def _run_worker(args, flag: bool) -> dict[str, list[float]]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(
        "--xla_cpu_experimental_ynn_fusion_type"
    )]  # fmt: skip
    if flag:
        flags.append(FLAG)
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    cmd = [sys.executable, "-m", "benchmarks.layout", "--worker",
           "--repeats", str(args.repeats), "--batch", str(args.batch)]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    proc = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmarks.layout: worker with flag={'on' if flag else 'off'} failed "
            f"(exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(seconds: list[float]) -> tuple[float, float]:
    import numpy as np

    ms = np.asarray(seconds) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return float(med), float(q3 - q1)


def table(pooled: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table: variant, flag, median ms, IQR ms, ratio to the baseline
    of its group (train: NCHW custom, flag off; maxpool: NCHW custom fwd+bwd)."""
    rows = ["| variant | YNN flag | median ms | IQR ms | vs baseline |",
            "|---|---|---:|---:|---:|"]  # fmt: skip
    names = list(pooled["off"])
    baseline = {
        "train": _summary(pooled["off"]["train NCHW custom"])[0],
        "maxpool": _summary(pooled["off"]["maxpool NCHW custom fwd+bwd"])[0],
    }
    for name in names:
        for flag in ("off", "on"):
            med, iqr = _summary(pooled[flag][name])
            ratio = med / baseline[name.split()[0]]
            rows.append(f"| {name} | {flag} | {med:.2f} | {iqr:.2f} | {ratio:.2f}x |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    """Runs the workers and prints the table; returns `{"batch", "rounds",
    "repeats", "samples": {flag: {variant: seconds}}, "markdown"}`."""
    args = _parser().parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.batch = args.batch or (16 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 2)
    if args.worker:
        _worker(args)
        return {}
    pooled: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    for _ in range(rounds):
        for flag in (False, True):
            for name, seconds in _run_worker(args, flag).items():
                pooled["on" if flag else "off"].setdefault(name, []).extend(seconds)
    text = (
        f"Layout: batch {args.batch}, {rounds} round(s) x {args.repeats} repeats per "
        f"flag setting, {os.cpu_count()} CPUs visible.\n\n{table(pooled)}"
    )
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"batch": args.batch, **pooled}))
    return {
        "batch": args.batch,
        "rounds": rounds,
        "repeats": args.repeats,
        "samples": pooled,
        "markdown": text,
    }


if __name__ == "__main__":
    main()

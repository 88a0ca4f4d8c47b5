"""Images/s of the data-parallel train step on 1, 2 and 4 forced host devices.

Each device count runs in its own subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (JAX fixes its devices when
it starts). Every run trains the same model from the same seed on the same
batches, so the final loss column doubles as a correctness check: it should agree
across device counts to float32 rounding.

The forced host devices share the machine's CPU cores, so this measures the
correctness and overhead of splitting the step, not how it scales on real
accelerators. Run on several GPUs (`--platform cuda`, device counts up to the
number of GPUs) for real scaling numbers.

    python experiments/scaling.py --model lenet --devices 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CAVEAT = (
    "Caveat: forced host devices share this machine's {cores} CPU cores (load "
    "average {load} while measuring). A speed-up here only means the split step "
    "keeps idle cores busy that one CPU device left idle; it is capped by the "
    "core count and distorted by other jobs. Read the table for correctness "
    "(the same final loss) and the cost of splitting, not as GPU scaling."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("lenet", "vgg"), default="lenet")
    parser.add_argument(
        "--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps")
    parser.add_argument("--grad", choices=("custom", "autodiff"), default="custom")
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS to use")
    parser.add_argument("--out", default="bench_out/scaling.json", help="JSON path")
    parser.add_argument("--timeout", type=float, default=600.0, help="s per run")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bad = [n for n in args.devices if n < 1 or args.batch_size % n]
    if bad:
        parser.error(
            f"expected device counts that divide --batch-size {args.batch_size}, "
            f"got {bad}."
        )
    return args


def _worker(args: argparse.Namespace) -> dict:
    """Runs in the subprocess: times the step on `args.worker` devices."""
    import jax
    import numpy as np

    import funcnn.distributed as dp
    from funcnn import models
    from funcnn.training.optim import make_optimizer
    from funcnn.training.step import create_train_state, make_train_step

    n = args.worker
    if jax.device_count() < n:
        raise SystemExit(f"scaling: expected {n} devices, got {jax.devices()}.")
    chw = (1, 28, 28) if args.model == "lenet" else (3, 32, 32)
    model = {"lenet": models.lenet, "vgg": models.vgg_small}[args.model](10)
    optimizer = make_optimizer("momentum", 0.01)
    state = create_train_state(model, (-1, *chw), optimizer, seed=0)
    step = make_train_step(model, optimizer, grad=args.grad, jit=False)
    mesh = dp.make_mesh(jax.devices()[:n])
    train_step = dp.data_parallel(step, mesh)
    state = dp.replicate(state, mesh)

    rng = np.random.default_rng(0)
    total = args.warmup + args.steps
    x = rng.normal(size=(total, args.batch_size, *chw)).astype(np.float32)
    y = rng.integers(0, 10, size=(total, args.batch_size)).astype(np.int32)
    batches = [dp.shard_batch((x[i], y[i]), mesh) for i in range(total)]

    start = time.perf_counter()
    for i in range(args.warmup):
        state, metrics = train_step(state, batches[i])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(args.warmup, total):
        t0 = time.perf_counter()
        state, metrics = train_step(state, batches[i])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {
        "devices": n,
        "per_device_batch": args.batch_size // n,
        "median_step_s": median,
        "best_step_s": float(np.min(times)),
        "images_per_s": args.batch_size / median,
        "warmup_s": compile_s,
        "final_loss": float(metrics["loss"]),
        "step_times_s": times,
    }


def _run_worker(args: argparse.Namespace, n: int) -> dict:
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    if args.platform == "cpu":
        flags.append(f"--xla_force_host_platform_device_count={n}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = args.platform
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n)]
    cmd += ["--model", args.model, "--batch-size", str(args.batch_size)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--grad", args.grad, "--devices", str(n)]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=args.timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"scaling: the run on {n} devices failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """A markdown table of the runs: images/s from the median step time, speed-up
    relative to the first row."""
    base = rows[0]["images_per_s"]
    out = [
        "| devices | per-device batch | median step (ms) | best step (ms) | "
        "images/s | speed-up | efficiency | final loss |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = r["images_per_s"] / base
        out.append(
            f"| {r['devices']} | {r['per_device_batch']} | "
            f"{1e3 * r['median_step_s']:.2f} | {1e3 * r['best_step_s']:.2f} | "
            f"{r['images_per_s']:.0f} | "
            f"{speedup:.2f}x | {speedup / (r['devices'] / rows[0]['devices']):.0%} | "
            f"{r['final_loss']:.6f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args)), flush=True)
        return {}
    rows = []
    for n in args.devices:
        print(f"scaling: {args.model} on {n} device(s)...", file=sys.stderr)
        rows.append(_run_worker(args, n))
    result = {
        "model": args.model,
        "grad": args.grad,
        "platform": args.platform,
        "global_batch": args.batch_size,
        "timed_steps": args.steps,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "machine": platform.platform(),
        "runs": rows,
    }
    print(
        f"\n{args.model}, global batch {args.batch_size}, grad={args.grad}, "
        f"median of {args.steps} steps, platform {args.platform}, "
        f"{os.cpu_count()} CPU cores\n"
    )
    print(table(rows))
    if args.platform == "cpu":
        load = result["load_average"]
        load = "n/a" if load is None else f"{load[0]:.1f}"
        print("\n" + CAVEAT.format(cores=os.cpu_count(), load=load))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()

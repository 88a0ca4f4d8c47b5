"""Run-to-run determinism of the train step, per gradient mode.

For each `--grad` mode, two fresh processes build the same model from the same
seed and take the same `--steps` train steps on the same batches. Each process
reports a SHA-256 of its final parameters and optimizer state (their raw bytes)
and its loss after every step; the two runs of a mode are bit-identical when the
digests match. A mode whose step fails to compile or run is reported with the
error, not hidden.

The point of it is the GPU: XLA's GPU backend picks convolution algorithms by
autotuning and may use atomics, so results can differ run to run unless
`--xla_gpu_deterministic_ops=true` is set; JAX's own max-pool gradient
(select_and_scatter) is expected not to run in that mode (to be confirmed on a
GPU: the table shows the error if it does not). The custom rules use neither
autotuned scatters nor atomics, so

    XLA_FLAGS=--xla_gpu_deterministic_ops=true python experiments/determinism.py

should show `custom` compiling, running and bit-identical. On CPU both modes are
deterministic and the script checks exactly that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("lenet", "vgg", "vgg_nobn"), default="vgg")
    parser.add_argument("--grad", nargs="+", default=["custom", "autodiff"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0, help="s per run")
    parser.add_argument("--out", default=None, help="also write the report as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bad = sorted(set(args.grad) - {"custom", "autodiff"})
    if bad:
        parser.error(f"expected --grad values custom/autodiff, got {bad}.")
    if args.steps < 1 or args.batch_size < 1:
        parser.error(
            f"expected --steps and --batch-size >= 1, got {args.steps} and "
            f"{args.batch_size}."
        )
    return args


def digest(tree) -> str:
    """SHA-256 over the dtype, shape and bytes of every leaf, in tree order."""
    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", float), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # typed PRNG keys: hash their bits
        a = np.asarray(jax.device_get(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _worker(args: argparse.Namespace) -> dict:
    """One run of one mode (in a fresh process): final-state digest and losses."""
    import jax
    import optax

    sys.path.insert(0, str(ROOT))
    from benchmarks.jax_side import build_model
    from funcnn.training.step import create_train_state, make_train_step

    (grad,) = args.grad
    hw, channels = ((28, 28), 1) if args.model == "lenet" else ((32, 32), 3)
    shape = (args.batch_size, channels, *hw)
    model = build_model(args.model)
    optimizer = optax.adam(1e-3)
    state = create_train_state(model, (-1, *shape[1:]), optimizer, seed=args.seed)
    step = make_train_step(model, optimizer, grad=grad)
    key = jax.random.PRNGKey(args.seed + 1)
    losses = []
    for i in range(args.steps):
        kx, ky = jax.random.split(jax.random.fold_in(key, i))
        x = jax.random.normal(kx, shape, jax.numpy.float32)
        y = jax.random.randint(ky, (shape[0],), 0, 10)
        state, metrics = step(state, (x, y))
        losses.append(float(metrics["loss"]))
    return {
        "digest": digest((state.params, state.model_state, state.opt_state)),
        "losses": losses,
        "device": jax.devices()[0].device_kind,
    }


def _run_once(args: argparse.Namespace, grad: str) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--grad",
        grad,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return {"error": " | ".join(lines[-3:])[-600:] or f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(runs: list[dict]) -> dict:
    """Verdict for one mode from its runs."""
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"ran": False, "identical": False, "error": errors[0]}
    same = len({r["digest"] for r in runs}) == 1
    worst = max(
        abs(a - b) for a, b in zip(runs[0]["losses"], runs[1]["losses"], strict=True)
    )
    return {"ran": True, "identical": same, "max_loss_diff": worst}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    flags = os.environ.get("XLA_FLAGS", "")
    print(
        f"model {args.model}, batch {args.batch_size}, {args.steps} steps, seed "
        f"{args.seed}, XLA_FLAGS={flags!r}; two fresh processes per mode"
    )
    report = {"xla_flags": flags, "args": vars(args), "modes": {}}
    print("| grad | compiled and ran | bit-identical | max loss Δ | digest or error |")
    print("|---|---|---|---|---|")
    for grad in args.grad:
        runs = [_run_once(args, grad) for _ in range(2)]
        verdict = compare(runs)
        report["modes"][grad] = {"runs": runs, **verdict}
        if verdict["ran"]:
            detail = runs[0]["digest"][:16]
            diff = f"{verdict['max_loss_diff']:.3g}"
        else:
            detail, diff = verdict["error"].replace("|", "/"), "-"
        print(
            f"| {grad} | {'yes' if verdict['ran'] else 'no'} "
            f"| {'yes' if verdict['identical'] else 'no'} | {diff} | {detail} |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    custom = report["modes"].get("custom")
    return 0 if custom is None or custom["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())

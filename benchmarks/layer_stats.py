"""The cost of `make_train_step(layer_stats=True)`: one VGG-style train step with
and without the per-layer gradient norms and delta RMS metrics.

    python -m benchmarks.layer_stats [--quick] [--batch-size 128] [--repeats 20]

The model is `vgg_small` without BatchNorm or dropout, as `jax_side.build_model(
"vgg_nobn")` builds it for the train section, on 3x32x32 inputs. Both steps run
round-robin after warm-up (`timing.interleaved`), so load from other processes
hits them alike; the target is a ratio of at most 1.15.
"""

from __future__ import annotations

import argparse
import platform

import jax
import optax

from benchmarks import jax_side, timing
from funcnn.training.step import create_train_state, make_train_step

TARGET_RATIO = 1.15


def measure(batch_size: int, repeats: int, grad: str = "custom") -> dict:
    """Times both steps; returns {"plain"|"layer_stats": summarize(...), "ratio",
    "metrics": the number of metrics each step returns}."""
    shape = (batch_size, 3, 32, 32)
    model = jax_side.build_model("vgg_nobn")
    optimizer = optax.adam(1e-3)
    batch = jax_side.train_batch(shape)
    steps, states, counts = {}, {}, {}
    for name, stats in (("plain", False), ("layer_stats", True)):
        steps[name] = make_train_step(model, optimizer, grad=grad, layer_stats=stats)
        states[name] = create_train_state(model, (-1, *shape[1:]), optimizer)
        states[name], metrics = steps[name](states[name], batch)  # compile
        counts[name] = len(metrics)

    times = timing.interleaved_steps(
        steps, states, batch, repeats=repeats, sync=jax.block_until_ready
    )
    ratio = times["layer_stats"]["median_ms"] / times["plain"]["median_ms"]
    return {**times, "ratio": ratio, "metrics": counts}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 16, 3 repeats")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--repeats", type=int, default=None, help="default 20")
    p.add_argument("--grad", choices=jax_side.GRADS, default="custom")
    args = p.parse_args(argv)
    batch_size = args.batch_size or (16 if args.quick else 128)
    repeats = args.repeats or (3 if args.quick else 20)
    if batch_size < 1 or repeats < 1:
        p.error(
            f"expected --batch-size and --repeats >= 1, got {batch_size} and {repeats}."
        )
    result = measure(batch_size, repeats, args.grad)
    device = jax.devices()[0]
    print(
        f"layer_stats cost: vgg_small (no BN, no dropout), batch {batch_size}x3x32x32, "
        f"grad={args.grad!r}, {repeats} interleaved repeats on "
        f"{device.platform} ({device.device_kind}, {platform.machine()})"
    )
    for name in ("plain", "layer_stats"):
        t = result[name]
        print(
            f"  {name:<12} median {t['median_ms']:8.2f} ms  IQR {t['iqr_ms']:6.2f} ms"
            f"  ({result['metrics'][name]} metrics)"
        )
    verdict = "within" if result["ratio"] <= TARGET_RATIO else "ABOVE"
    print(
        f"  ratio layer_stats / plain = {result['ratio']:.3f} ({verdict} the "
        f"{TARGET_RATIO}x target)"
    )
    return result


if __name__ == "__main__":
    main()

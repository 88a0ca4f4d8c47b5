"""The peers section: funcnn's train step against the same models in Flax (linen
and NNX) and Equinox, on the same XLA.

    python experiments/bench.py --only peers [--quick] [--repeats N]

Models (`benchmarks.peer_models`): LeNet-5 at 1x28x28, the VGG-style net without
BatchNorm ("vgg_nobn") and ResNet-20 at 3x32x32, each at batch 128 (8 with
--quick, LeNet only), float32, plain SGD (learning rate 0.01), softmax
cross-entropy. funcnn runs `make_train_step` with its hand-written rules
("custom") in NCHW and in NHWC, and with autodiff in NCHW (not with --quick);
Flax in NHWC, its
native layout; Equinox in NCHW, its. Every variant of a model runs round-robin
(`timing.interleaved`) in this process, so a ratio's repeats pair up for the
bootstrap interval (`benchmarks.targets`).

Each step is timed as its framework's users call it, Python dispatch included:
funcnn's jitted, donating step (which also returns accuracy, the gradient norm
and a non-finite guard), `jax.jit` over a linen `TrainState`, `nnx.jit` over a
model and `nnx.Optimizer`, and `eqx.filter_jit`. The FLOPs (XLA's cost analysis)
and the canonical optimized HLO come from lowering that same jitted step, whose
compilation the timed calls then reuse.

flax and equinox are the `bench` extra (`pip install funcnn[bench]`); without
them the section reports n/a.
"""

from __future__ import annotations

import jax
import optax

from benchmarks import jax_side, timing

LEARNING_RATE = 0.01
FUNCNN = {
    "funcnn custom NCHW": ("NCHW", "custom"),
    "funcnn custom NHWC": ("NHWC", "custom"),
    "funcnn autodiff NCHW": ("NCHW", "autodiff"),
}
PEERS = ("flax_linen", "flax_nnx", "equinox")
LABELS = {
    "funcnn": "funcnn",
    "flax_linen": "Flax linen",
    "flax_nnx": "Flax NNX",
    "equinox": "Equinox",
}
# Each peer is judged against funcnn in its own native layout.
FUNCNN_FOR = {
    "flax_linen": "funcnn custom NHWC",
    "flax_nnx": "funcnn custom NHWC",
    "equinox": "funcnn custom NCHW",
}


def cases(quick: bool) -> list[dict]:
    """Models and NCHW input shapes (with batch) of the section."""
    if quick:
        return [{"model": "lenet", "input": [8, 1, 28, 28]}]
    return [
        {"model": "lenet", "input": [128, 1, 28, 28]},
        {"model": "vgg_nobn", "input": [128, 3, 32, 32]},
        {"model": "resnet20", "input": [128, 3, 32, 32]},
    ]


def peer_models():
    """`benchmarks.peer_models`, or the reason it cannot load (flax or equinox
    missing)."""
    try:
        # Imported here, not at the top: flax and equinox are optional (the
        # `bench` extra), and the rest of the benchmark runs without them.
        from benchmarks import peer_models
    except ImportError as err:
        return None, f"{err}; install the bench extra: pip install funcnn[bench]"
    return peer_models, ""


def funcnn_step(name: str, input_shape, layout: str, grad: str, optimizer):
    """funcnn's train step as `(run, lower)`, like the peers' builders."""
    from funcnn import models
    from funcnn.training.step import create_train_state, make_train_step

    build = {"lenet": models.lenet, "vgg_nobn": models.vgg_small}
    kwargs = {"batchnorm": False, "dropout": 0.0} if name == "vgg_nobn" else {}
    model = build.get(name, models.resnet20)(10, layout=layout, **kwargs)
    n, c, h, w = input_shape
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    state = create_train_state(model, (-1, *shape[1:]), optimizer)
    batch = jax_side.train_batch(shape)
    step = make_train_step(model, optimizer, grad=grad)
    box = {"state": state}

    def run():
        box["state"], metrics = step(box["state"], batch)
        return metrics

    return run, lambda: step.lower(box["state"], batch)


def funcnn_param_count(name: str, input_shape) -> int:
    """Trainable parameters of funcnn's model (BatchNorm statistics excluded)."""
    model = jax_side.build_model(name)
    _, params, _ = model.init(jax.random.PRNGKey(0), tuple(input_shape))
    return sum(int(a.size) for a in jax.tree_util.tree_leaves(params))


def measure(case: dict, repeats: int, peer_models, quick: bool = False) -> dict:
    """Times every variant of one model round-robin; returns {"times", "gflop",
    "compile_s", "params", "nnx_same_program"}. `quick` leaves out funcnn's
    autodiff step (a compile less in the smoke test)."""
    name, shape = case["model"], case["input"]
    optimizer = optax.sgd(LEARNING_RATE)
    builders = {
        label: (lambda layout=layout, grad=grad: funcnn_step(
            name, shape, layout, grad, optimizer))
        for label, (layout, grad) in FUNCNN.items()
        if not (quick and grad == "autodiff")
    }  # fmt: skip
    for peer in PEERS:
        builders[peer] = lambda peer=peer: peer_models.STEPS[peer](
            name, shape, optimizer
        )
    fns, gflop, compile_s, programs = {}, {}, {}, {}
    for label, build in builders.items():
        fns[label], lower = build()
        seconds, flops, programs[label] = jax_side.compile_stats(lower)
        gflop[label] = flops and flops / 1e9
        compile_s[label] = seconds
    times = timing.interleaved(fns, repeats=repeats, sync=jax.block_until_ready)
    for stats in times.values():
        stats["images_per_s"] = shape[0] / (stats["median_ms"] / 1e3)
    params = {"funcnn": funcnn_param_count(name, shape)}
    return {
        "times": times,
        "gflop": gflop,
        "compile_s": compile_s,
        "params": {**params, **peer_models.param_counts(name, shape)},
        "nnx_same_program": programs["flax_nnx"] == programs["flax_linen"],
    }


def main(quick: bool, repeats: int, log=print) -> dict:
    """The section's results: {"available", "reason"?, "cases": {model: ...},
    "markdown"}."""
    module, reason = peer_models()
    if module is None:
        results = {"available": False, "reason": reason}
    else:
        results = {"available": True, "cases": {}}
        for case in cases(quick):
            log(f"peers: {case['model']}")
            entry = measure(case, repeats, module, quick)
            results["cases"][case["model"]] = {"case": case, **entry}
    results["markdown"] = "\n".join(table(results))
    return results


def _ratio_cell(a: dict, b: dict) -> str:
    return f"{a['median_ms'] / b['median_ms']:.2f}"


def table(results: dict) -> list[str]:
    """Markdown: per model, every variant's median ms (IQR), images/s, GFLOP per
    step and compile seconds, and funcnn custom's ratio to it in each layout."""
    if not results["available"]:
        return [f"n/a: {results['reason']}"]
    lines = [
        f"Batch, optimizer (SGD, lr {LEARNING_RATE}), dtype float32 and "
        "architecture shared; initial weights differ. GFLOP: XLA's cost analysis "
        "of the compiled step.",
        "",
    ]
    for name, entry in results["cases"].items():
        times = entry["times"]
        shape = "x".join(str(d) for d in entry["case"]["input"])
        counts = ", ".join(f"{LABELS[k]} {v:,}" for k, v in entry["params"].items())
        same = "the same" if entry["nnx_same_program"] else "not the same"
        lines += [
            f"**{name}** {shape} (NCHW). Parameters: {counts}. NNX's optimized "
            f"program is {same} as linen's.",
            "",
            "| variant | median ms (IQR) | img/s | GFLOP/step | compile s "
            "| funcnn custom NCHW / this | funcnn custom NHWC / this |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, stats in times.items():
            gflop = entry["gflop"].get(label)
            lines.append(
                f"| {LABELS.get(label, label)} | {stats['median_ms']:.2f} "
                f"({stats['iqr_ms']:.2f}) | {stats['images_per_s']:.0f} "
                f"| {'-' if gflop is None else f'{gflop:.3f}'} "
                f"| {entry['compile_s'][label]:.1f} "
                f"| {_ratio_cell(times['funcnn custom NCHW'], stats)} "
                f"| {_ratio_cell(times['funcnn custom NHWC'], stats)} |"
            )
        lines.append("")
    return lines

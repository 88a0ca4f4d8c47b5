"""JAX measurements: ops (custom vs autodiff rules), residual bytes, train steps."""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import timing
from funcnn import models, ops

GRADS = ("custom", "autodiff")


def _inputs(case: dict) -> list:
    dtype = jnp.dtype(case.get("dtype", "float32"))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    arrays = [jax.random.normal(keys[0], case["x"], dtype)]
    if case["op"] == "conv2d":
        fan_in = int(np.prod(case["w"][1:]))
        w = jax.random.normal(keys[1], case["w"], dtype) / np.sqrt(fan_in)
        arrays += [w, jax.random.normal(keys[2], case["b"], dtype)]
    return arrays


def op_fn(case: dict, grad: str):
    """The case's op as a function of its array inputs, with `grad` fixed."""
    kw = case["kwargs"]
    if case["op"] == "conv2d":
        return lambda x, w, b: ops.conv2d(x, w, b, grad=grad, **kw)
    op = ops.max_pool2d if case["op"] == "max_pool2d" else ops.avg_pool2d
    return lambda x: op(x, case["window"], grad=grad, **kw)


def _compile_seconds(jitted, *args) -> float:
    return _compile(jitted, *args)[0]


def _compile(jitted, *args):
    """(compile seconds, the compiled executable)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - start, compiled


# Debug tables (file names, stack frames) that the HLO printer puts before the
# first computation, and the metadata attribute (op names, source lines). A quoted
# string may hold braces, so the attribute's value is matched string by string.
_DEBUG_TABLE = re.compile(
    r"^(FileNames|FunctionNames|FileLocations|StackFrames)\n(?:.+\n)*", re.M
)
_METADATA = re.compile(r',\s*metadata=\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
# An instruction or computation name (%fused_computation.3, %param_0.1) and a
# parameter name in a computation's signature ("(param_0.1: f32[2,4]") .
_NAME = re.compile(
    r"%[A-Za-z_][\w.\-]*"
    r"|(?<=\()[A-Za-z_][\w.\-]*(?=: )"
    r"|(?<=, )[A-Za-z_][\w.\-]*(?=: )"
)


def canonical_hlo(compiled) -> str:
    """The optimized HLO text of a compiled program, with everything that names
    rather than computes taken out: the module name, the debug tables, `metadata`
    (op names, source lines), and instruction, computation and parameter names
    (renumbered in order of first appearance). Two programs with equal canonical
    text run the same instructions on the same shapes, layouts and attributes
    (including backend configs), in the same order."""
    text = compiled.as_text()
    text = re.sub(r"^HloModule [^,\s]+", "HloModule m", text, count=1, flags=re.M)
    text = _METADATA.sub("", _DEBUG_TABLE.sub("", text))
    names: dict[str, str] = {}

    def rename(match: re.Match) -> str:
        name = match.group(0).lstrip("%")
        names.setdefault(name, f"v{len(names)}")
        return ("%" if match.group(0).startswith("%") else "") + names[name]

    return _NAME.sub(rename, text)


def _compile_stats(jitted, *args) -> tuple[float, float | None, str]:
    """(compile seconds, FLOPs of one call as XLA's cost analysis counts them,
    canonical HLO)."""
    return compile_stats(lambda: jitted.lower(*args))


def compile_stats(lower) -> tuple[float, float | None, str]:
    """`_compile_stats` of what `lower()` returns (a `jax.stages.Lowered`)."""
    start = time.perf_counter()
    compiled = lower().compile()
    seconds = time.perf_counter() - start
    hlo = canonical_hlo(compiled)
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends have no cost model
        return seconds, None, hlo
    if isinstance(cost, (list, tuple)):  # one entry per program in older JAX
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return seconds, (float(flops) if flops and flops > 0 else None), hlo


# Sleep before each timed call when torch takes part: both frameworks' thread
# pools spin for a moment after their work, which would bill the next variant.
SETTLE_S = 0.005


def _split(times: dict, torch_fns: dict) -> tuple[dict, dict]:
    jax_times = {k: v for k, v in times.items() if k not in torch_fns}
    return jax_times, {k: v for k, v in times.items() if k in torch_fns}


def bench_op(case: dict, repeats: int, torch_worker=None) -> dict:
    """Times each requested part of one op case for both grad modes, interleaved,
    and for PyTorch too when a `remote.TorchWorker` is given.

    Parts: "fwd" (jit of the op), "bwd" (jit of the VJP function returned by
    `jax.vjp`, applied to a random cotangent: the backward alone, residuals
    precomputed) and "fwdbwd" (jit of `jax.vjp` plus the pullback in one call).

    Returns:
      {"jax": {"times", "compile_s", "same_program"}, "torch": {"times"}}
      ("torch" only with a worker; "same_program": whether both modes' fwd+bwd
      compile to the same `canonical_hlo`).
    """
    arrays = _inputs(case)
    out_shape = jax.eval_shape(op_fn(case, "custom"), *arrays).shape
    g = jax.random.normal(jax.random.PRNGKey(1), out_shape, arrays[0].dtype)
    fns, compile_s, programs = {}, {}, {}
    for grad in GRADS:
        f = op_fn(case, grad)
        if "fwd" in case["parts"]:
            fwd = jax.jit(f)
            compile_s[f"fwd/{grad}"] = _compile_seconds(fwd, *arrays)
            fns[f"fwd/{grad}"] = lambda fwd=fwd: fwd(*arrays)
        if "bwd" in case["parts"]:
            _, pullback = jax.vjp(f, *arrays)
            bwd = jax.jit(lambda pullback, g: pullback(g))
            compile_s[f"bwd/{grad}"] = _compile_seconds(bwd, pullback, g)
            fns[f"bwd/{grad}"] = lambda bwd=bwd, p=pullback: bwd(p, g)
        if "fwdbwd" in case["parts"]:

            def step(g, *args, f=f):
                y, pullback = jax.vjp(f, *args)
                return y, pullback(g)

            both = jax.jit(step)
            compile_s[f"fwdbwd/{grad}"], compiled = _compile(both, g, *arrays)
            programs[grad] = canonical_hlo(compiled)
            fns[f"fwdbwd/{grad}"] = lambda both=both: both(g, *arrays)
    torch_fns = torch_worker.callables("op", case) if torch_worker else {}
    times = timing.interleaved(
        {**fns, **torch_fns},
        repeats=repeats,
        sync=jax.block_until_ready,
        settle=SETTLE_S if torch_fns else 0.0,
    )
    jax_times, torch_times = _split(times, torch_fns)
    out = {"jax": {"times": jax_times, "compile_s": compile_s}}
    if len(programs) == 2:  # fwd+bwd: do both modes compile to one program?
        out["jax"]["same_program"] = programs["custom"] == programs["autodiff"]
    if torch_fns:
        out["torch"] = {"times": torch_times}
    return out


def residual_bytes(case: dict) -> dict:
    """Bytes the backward pass keeps alive, per grad mode.

    Method: `jax.vjp(f, *inputs)` returns the pullback as a `jax.tree_util.Partial`
    whose leaves are exactly the arrays it closes over (the residuals of the custom
    rule, or the constants of autodiff's linearised jaxpr). We sum their `nbytes`,
    and separately the part that is not one of the inputs themselves (identical
    buffers, compared with `is` after unwrapping; a saved input costs no new memory
    in the layer alone, but keeps the activation alive in a network).
    """
    arrays = _inputs(case)
    out = {}
    for grad in GRADS:
        _, pullback = jax.vjp(op_fn(case, grad), *arrays)
        leaves = [
            x for x in jax.tree_util.tree_leaves(pullback) if hasattr(x, "nbytes")
        ]
        total = sum(int(x.nbytes) for x in leaves)
        inputs = sum(
            int(x.nbytes)
            for x in leaves
            if any(x is a or _same_buffer(x, a) for a in arrays)
        )
        out[grad] = {
            "total_bytes": total,
            "input_bytes": inputs,
            "new_bytes": total - inputs,
            "leaves": [f"{x.dtype}{list(x.shape)}" for x in leaves],
        }
    return out


def _same_buffer(a, b) -> bool:
    try:
        return (
            a.shape == b.shape
            and a.dtype == b.dtype
            and a.unsafe_buffer_pointer() == b.unsafe_buffer_pointer()
        )
    except Exception:  # not a single-device jax.Array
        return False


# ------------------------------------------------------------------ train steps


def build_model(name: str, num_classes: int = 10):
    if name == "lenet":
        return models.lenet(num_classes)
    if name == "vgg":
        return models.vgg_small(num_classes)
    if name == "vgg_nobn":
        return models.vgg_small(num_classes, batchnorm=False, dropout=0.0)
    if name == "resnet20":
        return models.resnet20(num_classes)
    if name == "resnet18":
        return models.resnet18(num_classes)
    raise ValueError(f"bench: unknown model {name!r}.")


def make_step(model, grad: str, input_shape):
    """(step(state, batch) -> (state, metrics), initial state), jitted and donating.

    Uses `funcnn.train.make_train_step` with optax.adam(1e-3); falls back to a
    minimal jitted step if funcnn.train is missing.
    """
    optimizer = optax.adam(1e-3)
    try:
        from funcnn.training.step import create_train_state, make_train_step
    except ImportError:
        return _minimal_step(model, optimizer, grad, input_shape)
    state = create_train_state(model, (-1, *input_shape[1:]), optimizer)
    return make_train_step(model, optimizer, grad=grad), state


def _minimal_step(model, optimizer, grad, input_shape):
    from funcnn.training.losses import softmax_cross_entropy

    _, params, model_state = model.init(jax.random.PRNGKey(0), tuple(input_shape))

    def step(state, batch):
        params, model_state, opt_state, key = state
        x, y = batch
        key, sub = jax.random.split(key)

        def objective(p):
            out, ms = model.apply(p, model_state, x, train=True, key=sub, grad=grad)
            return softmax_cross_entropy(out, y), ms

        (value, ms), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, ms, opt_state, key), {"loss": value}

    state = (params, model_state, optimizer.init(params), jax.random.PRNGKey(1))
    return jax.jit(step, donate_argnums=0), state


def train_batch(input_shape, dtype: str = "float32"):
    x = jax.random.normal(jax.random.PRNGKey(2), tuple(input_shape), jnp.dtype(dtype))
    y = jnp.arange(input_shape[0], dtype=jnp.int32) % 10
    return x, y


def bench_train(case: dict, repeats: int, torch_worker=None) -> dict:
    """Times one train step per grad mode (and torch's, given a worker),
    interleaved; reports images/s too. Returns the layout of `bench_op`."""
    shape = case["input"]
    model = build_model(case["model"])
    batch = train_batch(shape, case.get("dtype", "float32"))
    steps, states, compile_s, flops, programs = {}, {}, {}, {}, {}
    for grad in GRADS:
        steps[grad], states[grad] = make_step(model, grad, shape)
        compile_s[grad], flops[grad], programs[grad] = _compile_stats(
            steps[grad], states[grad], batch
        )

    def runner(grad):
        def run():
            states[grad], metrics = steps[grad](states[grad], batch)
            return metrics

        return run

    fns = {grad: runner(grad) for grad in GRADS}
    torch_fns = {}
    if torch_worker:
        (step,) = torch_worker.callables("train", case).values()
        torch_fns = {"torch": step}
    times = timing.interleaved(
        {**fns, **torch_fns},
        repeats=repeats,
        sync=jax.block_until_ready,
        settle=SETTLE_S if torch_fns else 0.0,
    )
    for name, stats in times.items():
        stats["images_per_s"] = shape[0] / (stats["median_ms"] / 1e3)
        if flops.get(name):
            stats["tflops_per_s"] = flops[name] / (stats["median_ms"] / 1e3) / 1e12
    jax_times, torch_times = _split(times, torch_fns)
    out = {"jax": {"times": jax_times, "compile_s": compile_s, "flops": flops}}
    out["jax"]["same_program"] = programs["custom"] == programs["autodiff"]
    if torch_fns:
        out["torch"] = {"times": torch_times}
    return out


# Dense peak TFLOP/s for float32 work at XLA's default precision, which on these
# GPUs runs float32 convolutions and matrix products on TF32 tensor cores
# (NVIDIA's data sheets; the figures "with sparsity" are twice these).
_PEAK_TFLOPS = (
    ("H100 PCIe", 378.0),
    ("H100", 494.7),  # SXM
    ("H200", 494.7),
    ("A100", 156.0),
)


def peak_tflops(device_kind: str, override: float | None = None):
    """(peak TFLOP/s, where it comes from) for the fraction-of-peak column."""
    if override:
        return override, "--peak-tflops"
    for name, peak in _PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak, f"TF32 dense peak of {name} (data sheet)"
    return None, f"unknown for {device_kind!r}; pass --peak-tflops"

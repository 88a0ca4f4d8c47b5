"""PyTorch (CPU, eager) measurements of the same cases, run in a worker subprocess.

Kept out of the JAX process on purpose: torch and jax in one process have caused
heap-corruption aborts in long loops here. Imported only by the worker.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import timing


def _inputs(case: dict) -> list:
    gen = torch.Generator().manual_seed(0)
    arrays = [torch.randn(case["x"], generator=gen, requires_grad=True)]
    if case["op"] == "conv2d":
        fan_in = 1
        for d in case["w"][1:]:
            fan_in *= d
        w = torch.randn(case["w"], generator=gen) / fan_in**0.5
        arrays += [w.requires_grad_(), torch.randn(case["b"], generator=gen)]
        arrays[2].requires_grad_()
    return arrays


def op_fn(case: dict):
    kw = dict(case["kwargs"])
    if case["op"] == "conv2d":
        return lambda x, w, b: F.conv2d(x, w, b, **kw)
    if case["op"] == "max_pool2d":
        return lambda x: F.max_pool2d(x, case["window"], **kw)
    return lambda x: F.avg_pool2d(x, case["window"], **kw)


def bench_op(case: dict, repeats: int) -> dict:
    arrays = _inputs(case)
    f = op_fn(case)
    with torch.no_grad():
        g = torch.randn(f(*arrays).shape, generator=torch.Generator().manual_seed(1))
    fns = {}
    if "fwd" in case["parts"]:

        def fwd():
            with torch.no_grad():
                return f(*arrays)

        fns["fwd/torch"] = fwd
    if "bwd" in case["parts"]:
        y = f(*arrays)
        fns["bwd/torch"] = lambda: torch.autograd.grad(y, arrays, g, retain_graph=True)
    if "fwdbwd" in case["parts"]:
        fns["fwdbwd/torch"] = lambda: torch.autograd.grad(f(*arrays), arrays, g)
    return {"times": timing.interleaved(fns, repeats=repeats)}


def build_model(name: str, input_shape, num_classes: int = 10) -> nn.Module:
    """The torch twin of `benchmarks.jax_side.build_model`."""
    _, c, h, w = input_shape
    if name == "lenet":
        # conv 5x5 pad 2 keeps the size, pool halves, conv 5x5 takes 4, pool halves.
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        return nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
    batchnorm = name == "vgg"

    def block(c_in, c_out):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)]
        return layers + ([nn.BatchNorm2d(c_out)] if batchnorm else []) + [nn.ReLU()]

    return nn.Sequential(
        *block(c, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *([nn.Dropout(0.25)] if batchnorm else []),
        nn.Linear(64 * (h // 4) * (w // 4), num_classes),
    )


def make_step(name: str, input_shape):
    torch.manual_seed(0)
    model = build_model(name, input_shape)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(input_shape)
    y = torch.arange(input_shape[0]) % 10

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def bench_train(case: dict, repeats: int) -> dict:
    shape = case["input"]
    step = make_step(case["model"], shape)
    start = time.perf_counter()
    step()
    first_s = time.perf_counter() - start
    times = timing.interleaved({"torch": step}, repeats=repeats)
    times["torch"]["images_per_s"] = shape[0] / (times["torch"]["median_ms"] / 1e3)
    return {"times": times, "first_step_s": first_s}


def run(spec: dict) -> dict:
    """Worker entry: every op and train case of `spec`, with its thread count."""
    torch.set_num_threads(spec["threads"])
    out = {"torch_version": torch.__version__, "threads": spec["threads"]}
    out["ops"] = {c["name"]: bench_op(c, spec["repeats"]) for c in spec["ops"]}
    out["train"] = {
        c["model"]: bench_train(c, spec["train_repeats"]) for c in spec["train"]
    }
    return out

"""PyTorch (CPU, eager) versions of the same cases, served from a worker subprocess.

Kept out of the JAX process on purpose: torch and jax in one process have caused
heap-corruption aborts in long loops here. Imported only by the worker, which
`serve` runs: it reads one JSON command per line on stdin and answers one JSON
line on stdout, so the JAX process can interleave torch iterations with its own
(see `benchmarks.remote`).
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def op_callables(case: dict) -> dict:
    """ "{part}/torch" -> callable running one iteration of that part."""
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
        # The graph is built once; each call runs only the backward.
        y = f(*arrays)
        fns["bwd/torch"] = lambda: torch.autograd.grad(y, arrays, g, retain_graph=True)
    if "fwdbwd" in case["parts"]:
        fns["fwdbwd/torch"] = lambda: torch.autograd.grad(f(*arrays), arrays, g)
    return fns


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


def serve() -> None:
    """Worker loop. Commands (one JSON object per line):

    {"cmd": "threads", "n": 2}; {"cmd": "op", "case": {...}} and
    {"cmd": "train", "case": {...}}, which prepare callables and answer their keys;
    {"cmd": "time", "key": k}, which runs one iteration and answers its seconds;
    {"cmd": "quit"}. Errors are answered as {"error": "..."}.
    """
    proto, sys.stdout = sys.stdout, sys.stderr  # stray prints must not break it
    fns: dict = {}
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "quit":
                break
            if cmd == "threads":
                torch.set_num_threads(msg["n"])
                reply = {"version": torch.__version__}
            elif cmd == "op":
                new = op_callables(msg["case"])
                fns.update({f"{msg['case']['name']}|{k}": fn for k, fn in new.items()})
                reply = {"keys": [f"{msg['case']['name']}|{k}" for k in new]}
            elif cmd == "train":
                key = f"train|{msg['case']['model']}"
                fns[key] = make_step(msg["case"]["model"], msg["case"]["input"])
                reply = {"keys": [key]}
            elif cmd == "time":
                start = time.perf_counter()
                fns[msg["key"]]()
                reply = {"s": time.perf_counter() - start}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as err:  # reported to the parent, which carries on
            reply = {"error": f"{type(err).__name__}: {err}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()

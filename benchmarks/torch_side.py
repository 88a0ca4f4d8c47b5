"""PyTorch (eager) versions of the same cases, served from a worker subprocess.

Kept out of the JAX process on purpose: torch and jax in one process have caused
heap-corruption aborts in long loops here. Imported only by the worker, which
`serve` runs: it reads one JSON command per line on stdin and answers one JSON
line on stdout, so the JAX process can interleave torch iterations with its own
(see `benchmarks.remote`).

Torch runs on the device the JAX side asks for ("cuda" when JAX's backend is a
GPU), with the case's dtype and batch. CUDA kernels run asynchronously, so a timed
iteration synchronizes the device before the clock starts and before it stops.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import torch_models


def _dtype(case: dict) -> torch.dtype:
    return getattr(torch, case.get("dtype", "float32"))


def synchronize(device: str) -> None:
    """Waits for the device's queued work (a no-op on the CPU, which is eager)."""
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(case: dict, device: str) -> list:
    # Drawn on the CPU (one generator, the same numbers on any device), then moved.
    gen = torch.Generator().manual_seed(0)
    arrays = [torch.randn(case["x"], generator=gen)]
    if case["op"] == "conv2d":
        fan_in = 1
        for d in case["w"][1:]:
            fan_in *= d
        w = torch.randn(case["w"], generator=gen) / fan_in**0.5
        arrays += [w, torch.randn(case["b"], generator=gen)]
    dtype = _dtype(case)
    return [a.to(device, dtype).requires_grad_() for a in arrays]


def op_fn(case: dict):
    kw = dict(case["kwargs"])
    if case["op"] == "conv2d":
        return lambda x, w, b: F.conv2d(x, w, b, **kw)
    if case["op"] == "max_pool2d":
        return lambda x: F.max_pool2d(x, case["window"], **kw)
    return lambda x: F.avg_pool2d(x, case["window"], **kw)


def op_callables(case: dict, device: str = "cpu") -> dict:
    """ "{part}/torch" -> callable running one iteration of that part."""
    arrays = _inputs(case, device)
    f = op_fn(case)
    with torch.no_grad():
        shape = f(*arrays).shape
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    g = g.to(device, _dtype(case))
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
    if name == "resnet20":
        return torch_models.resnet20(num_classes)
    if name == "resnet18":
        return torch_models.resnet18(num_classes)
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


def make_step(name: str, input_shape, device: str = "cpu", dtype: str = "float32"):
    """One Adam train step on a fixed batch, as a zero-argument callable."""
    torch.manual_seed(0)
    model = build_model(name, input_shape).to(device, getattr(torch, dtype))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(input_shape).to(device, getattr(torch, dtype))
    y = (torch.arange(input_shape[0]) % 10).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def pick_device(requested: str) -> tuple[str, str]:
    """(the device to use, a note when it is not the one requested)."""
    if requested == "cuda" and not torch.cuda.is_available():
        return "cpu", "CUDA requested, but torch.cuda.is_available() is False"
    if requested not in ("cpu", "cuda"):
        return "cpu", f"unknown device {requested!r} requested"
    return requested, ""


def serve() -> None:
    """Worker loop. Commands (one JSON object per line):

    {"cmd": "setup", "threads": 2, "device": "cuda"}, answered with the torch
    version and the device used ("cpu", with a note, when CUDA is asked for but
    absent); {"cmd": "op", "case": {...}} and {"cmd": "train", "case": {...}},
    which prepare callables and answer their keys; {"cmd": "time", "key": k},
    which runs one iteration and answers its seconds; {"cmd": "quit"}. Errors are
    answered as {"error": "..."}.
    """
    proto, sys.stdout = sys.stdout, sys.stderr  # stray prints must not break it
    fns: dict = {}
    device = "cpu"
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "quit":
                break
            if cmd == "setup":
                torch.set_num_threads(msg["threads"])
                device, note = pick_device(msg.get("device", "cpu"))
                reply = {"version": torch.__version__, "device": device, "note": note}
            elif cmd == "op":
                new = op_callables(msg["case"], device)
                fns.update({f"{msg['case']['name']}|{k}": fn for k, fn in new.items()})
                reply = {"keys": [f"{msg['case']['name']}|{k}" for k in new]}
            elif cmd == "train":
                case = msg["case"]
                key = f"train|{case['model']}"
                fns[key] = make_step(
                    case["model"], case["input"], device, case.get("dtype", "float32")
                )
                reply = {"keys": [key]}
            elif cmd == "time":
                synchronize(device)
                start = time.perf_counter()
                fns[msg["key"]]()
                synchronize(device)
                reply = {"s": time.perf_counter() - start}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as err:  # reported to the parent, which carries on
            reply = {"error": f"{type(err).__name__}: {err}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()

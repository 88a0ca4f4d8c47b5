"""The JAX process's handle on the PyTorch worker (`torch_side.serve`).

Each torch iteration is one request, timed inside the worker, so the JAX side can
put torch into the same round-robin as its own variants (`timing.interleaved`).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from benchmarks.timing import SelfTimed

# JAX backend -> the torch device type that runs on the same hardware. ROCm builds
# of torch also call their GPUs "cuda".
_TORCH_DEVICE = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "rocm": "cuda"}


def torch_device_for(jax_backend: str) -> str:
    """The torch device to request for a JAX backend ("cpu" where torch has no
    counterpart, e.g. a TPU; `backends_match` then says the two differ)."""
    return _TORCH_DEVICE.get(jax_backend, "cpu")


def backends_match(jax_backend: str, torch_device: str) -> bool:
    """Whether torch on `torch_device` runs on the hardware JAX's backend uses."""
    return _TORCH_DEVICE.get(jax_backend) == torch_device


class TorchWorker:
    """A running torch worker. Raises RuntimeError when the worker fails.

    `device` is the torch device requested ("cpu" or "cuda"); `self.device` is the
    one the worker uses, which is "cpu" when CUDA was asked for but torch has none.
    """

    def __init__(self, script: str, threads: int, device: str = "cpu"):
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("torch is not installed")
        self.proc = subprocess.Popen(
            [sys.executable, script, "--worker", "torch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reply = self.request({"cmd": "setup", "threads": threads, "device": device})
        self.version, self.device = reply["version"], reply["device"]
        self.device_note = reply.get("note", "")

    def request(self, msg: dict) -> dict:
        if self.proc.poll() is not None:
            raise RuntimeError(f"torch worker exited: {self._stderr()}")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch worker died: {self._stderr()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"torch worker: {reply['error']}")
        return reply

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-800:]

    def callables(self, kind: str, case: dict) -> dict[str, SelfTimed]:
        """Prepares a case ("op" or "train"); returns part -> self-timed callable."""
        keys = self.request({"cmd": kind, "case": case})["keys"]
        return {
            key.split("|", 1)[1]: SelfTimed(
                lambda key=key: self.request({"cmd": "time", "key": key})["s"]
            )
            for key in keys
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()

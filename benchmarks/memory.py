"""Peak memory of a few train steps, one fresh subprocess per configuration.

On CPU the figures are the process's resident set (RSS), read from /proc/self/status:
`VmRSS` (now) and `VmHWM` (the peak so far). A worker measures in three stages:

1. "before": RSS after imports, model, optimizer state and data exist;
2. compile: JAX compiles the step ahead of time; "compile MB" is the peak during
   compilation minus "before" (torch, eager, has no such stage);
3. one warm-up step runs, the peak is reset (`echo 5 > /proc/self/clear_refs`) and
   the RSS then is the "baseline"; the timed steps follow, and "step MB" is their
   peak minus that baseline: the memory the steps themselves need, without the
   compiler's.

Where the peak cannot be reset (no /proc, or an older kernel), "step MB" is left
out rather than mixed with compile memory. `resource.getrusage().ru_maxrss` is not
used: Linux carries it across fork and exec, so a worker started by the (large)
benchmark process would report at least the parent's peak. On a GPU the JAX side
also reports the device's `peak_bytes_in_use` (compilation included), and torch
`torch.cuda.max_memory_allocated` over the timed steps.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM") in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # the value is in kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS; whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _timed_steps(step, steps: int) -> dict:
    """Warm-up step, peak reset, `steps` steps: baseline and step figures."""
    step()
    out = {"baseline_mb": _status_mb("VmRSS")}
    if _reset_peak():
        for _ in range(steps):
            step()
        out["peak_mb"] = _status_mb("VmHWM")
        if out["peak_mb"] is not None and out["baseline_mb"] is not None:
            out["step_mb"] = out["peak_mb"] - out["baseline_mb"]
    else:
        for _ in range(steps):
            step()
    return out


def worker(case: dict) -> dict:
    """Runs in the subprocess: builds the step and measures it (module doc)."""
    steps = case.get("steps", 3)
    dtype = case.get("dtype", "float32")
    if case["framework"] == "torch":
        import torch

        from benchmarks import torch_side

        torch.set_num_threads(case["threads"])
        device, note = torch_side.pick_device(case.get("device", "cpu"))
        fn = torch_side.make_step(case["model"], case["input"], device, dtype)
        out = {"device": device, "before_mb": _status_mb("VmRSS"), "note": note}

        def step():
            fn()
            torch_side.synchronize(device)

        if device == "cuda":
            step()
            torch.cuda.reset_peak_memory_stats()
        out.update(_timed_steps(step, steps))
        if device == "cuda":
            out["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    import jax

    from benchmarks import jax_side

    model = jax_side.build_model(case["model"])
    jitted, state = jax_side.make_step(model, case["grad"], case["input"])
    batch = jax_side.train_batch(case["input"], dtype)
    jax.block_until_ready((state, batch))
    out = {"device": jax.default_backend(), "before_mb": _status_mb("VmRSS")}
    _reset_peak()
    compiled = jitted.lower(state, batch).compile()
    compile_peak = _status_mb("VmHWM")
    if compile_peak is not None and out["before_mb"] is not None:
        out["compile_mb"] = compile_peak - out["before_mb"]
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    out.update(_timed_steps(step, steps))
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def measure(
    script: str, cases: list[dict], threads: int, timeout: float, torch_device="cpu"
) -> list:
    """Runs `script --worker memory` once per case; failures become error rows.
    Torch cases run on `torch_device` (see `remote.torch_device_for`)."""
    rows = []
    for case in cases:
        spec = json.dumps({**case, "threads": threads, "device": torch_device})
        cmd = [sys.executable, script, "--worker", "memory", "--spec", spec]
        row = {k: case[k] for k in ("model", "framework", "grad", "input")}
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            rows.append({**row, "error": f"timed out after {timeout:.0f} s"})
            continue
        if proc.returncode != 0:
            rows.append({**row, "error": proc.stderr.strip()[-500:]})
            continue
        rows.append({**row, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows

"""Peak memory of a few train steps, one fresh subprocess per configuration.

On CPU the figure is the process's peak resident set, which includes the framework
runtime and compilation, so each row also gives the peak before the first step
("baseline", after imports, model and data creation) and the difference. It is read
from `VmHWM` in /proc/self/status: `resource.getrusage(...).ru_maxrss` would do on
a fresh process, but Linux carries ru_maxrss across fork and exec, so a worker
started by the (large) benchmark process would report at least the parent's peak.
getrusage is the fallback where /proc is missing. On a GPU the JAX side also
reports the device's `peak_bytes_in_use`.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def _maxrss_mb() -> float:
    """Peak resident set of this process so far, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # the value is in kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(case: dict) -> dict:
    """Runs in the subprocess: builds the step, records baseline and peak."""
    steps = case.get("steps", 3)
    if case["framework"] == "torch":
        import torch

        from benchmarks import torch_side

        torch.set_num_threads(case["threads"])
        step = torch_side.make_step(case["model"], case["input"])
        baseline = _maxrss_mb()
        for _ in range(steps):
            step()
        return {"baseline_mb": baseline, "peak_mb": _maxrss_mb()}

    import jax

    from benchmarks import jax_side

    model = jax_side.build_model(case["model"])
    fn, state = jax_side.make_step(model, case["grad"], case["input"])
    batch = jax_side.train_batch(case["input"])
    jax.block_until_ready((state, batch))
    baseline = _maxrss_mb()
    for _ in range(steps):
        state, metrics = fn(state, batch)
        jax.block_until_ready(metrics)
    out = {"baseline_mb": baseline, "peak_mb": _maxrss_mb()}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def measure(script: str, cases: list[dict], threads: int, timeout: float) -> list:
    """Runs `script --worker memory` once per case; failures become error rows."""
    rows = []
    for case in cases:
        spec = json.dumps({**case, "threads": threads})
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
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["delta_mb"] = result["peak_mb"] - result["baseline_mb"]
        rows.append({**row, **result})
    return rows

"""Every script in experiments/ runs: its cheapest meaningful invocation, as a
subprocess, so that none can rot unnoticed (scaling.py once died at import).

A script without an entry in SCRIPTS fails `test_every_script_has_an_entry`;
adding one is one line: the arguments ("{tmp}" becomes a fresh directory) and
a text its output must contain. Scripts that other tests run in full (train.py
in test_cli.py, bench.py in test_bench_smoke.py, determinism.py and
gradcheck_report.py in test_experiments_small.py, learning_rules.py in
test_lab.py) only show their --help here,
which still imports them and builds their parser. All scripts start at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
FOUND = sorted(p.name for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))

SCRIPTS = {  # script -> (arguments, a text the output must contain)
    "backprop_worked_example.py": (["--steps", "2"], "E_total after 2 steps"),
    "bench.py": (["--help"], "usage:"),
    "determinism.py": (["--help"], "usage:"),
    "forward_gradient.py": (
        ["--quick", "--out-dir", "{tmp}/fg"],
        "| forward_gradient/1 | 40 |",
    ),
    "gradcheck_report.py": (["--help"], "usage:"),
    "learning_rules.py": (["--help"], "usage:"),
    "physics_aware.py": (["--quick", "--out-dir", "{tmp}/pat"], "(reached) |"),
    "scaling.py": (
        [
            "--devices",
            "2",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--batch-size",
            "8",
            "--out",
            "{tmp}/scaling.json",
        ],
        "| 2 | 4 |",
    ),  # fmt: skip
    "train.py": (["--help"], "--resume-step STEP"),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"  # compiles faster
    procs = {}
    for name in FOUND:
        if name not in SCRIPTS:
            continue
        tmp = tmp_path_factory.mktemp(name.removesuffix(".py"))
        args = [a.format(tmp=tmp) for a in SCRIPTS[name][0]]
        procs[name] = subprocess.Popen(
            [sys.executable, str(EXPERIMENTS / name), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = (proc.returncode, out, err)
    return results


def test_every_script_has_an_entry():
    missing = sorted(set(FOUND) - set(SCRIPTS))
    assert not missing, f"add an entry to SCRIPTS for {missing}"
    gone = sorted(set(SCRIPTS) - set(FOUND))
    assert not gone, f"SCRIPTS lists scripts that no longer exist: {gone}"


@pytest.mark.parametrize("name", FOUND)
def test_script_runs(outputs, name):
    if name not in SCRIPTS:
        pytest.fail(f"experiments/{name} has no entry in SCRIPTS")
    code, out, err = outputs[name]
    assert code == 0, err[-3000:]
    assert SCRIPTS[name][1] in out, out[-3000:]
    assert "Traceback" not in err, err[-3000:]

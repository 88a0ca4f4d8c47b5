"""Runs the backprop worked example and the gradient-check report as scripts and
checks what they print against the textbook's figures."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
NUMBER = r"-?\d+\.\d+(?:e[-+]\d+)?"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def _value(text: str, label: str) -> float:
    """The number on the first line of text that reads `label = number`."""
    match = re.search(r"(?m)^\s*" + re.escape(label) + r" += (" + NUMBER + ")", text)
    assert match, f"{label!r} not found in:\n{text}"
    return float(match.group(1))


# The figures of the worked example as the texts print them (rounded to 8 or 9
# places), except the error after one step: the texts print 0.291027924 because
# they rounded intermediate values; unrounded arithmetic gives 0.29102777.
EXPECTED = {
    "out_o1": 0.75136507,
    "out_o2": 0.77292847,
    "E_total": 0.298371109,
    "w1": 0.14978072,
    "w2": 0.19956143,
    "w3": 0.24975114,
    "w4": 0.29950229,
    "w5": 0.35891648,
    "w6": 0.40866619,
    "w7": 0.51130127,
    "w8": 0.56137012,
    "E_total after 1 step": 0.29102777,
}


# The backward pass's intermediate figures as the texts print them, rounded to 8
# places; dE/dw1 = 0.00043857 has 5 significant digits, hence the relative
# tolerance of 1e-5.
BACKWARD = {
    "dE/dout_o1": 0.74136507,
    "delta_o1 = dE/dnet_o1": 0.13849856,
    "dE/dw5": 0.08216704,
    "dE/dout_h1": 0.03635031,
    "dE/dw1": 0.00043857,
}


@pytest.fixture(scope="module")
def worked_example_outputs():
    runs = {mode: _run("backprop_worked_example.py", "--grad", mode) for mode in
            ("custom", "autodiff")}  # fmt: skip
    for mode, run in runs.items():
        assert run.returncode == 0, f"--grad {mode} failed:\n{run.stderr}"
    return {mode: run.stdout for mode, run in runs.items()}


@pytest.mark.parametrize("mode", ["custom", "autodiff"])
def test_worked_example_prints_the_textbook_figures(worked_example_outputs, mode):
    text = worked_example_outputs[mode]
    assert f'grad="{mode}"' in text
    for label, expected in EXPECTED.items():
        assert _value(text, label) == pytest.approx(expected, abs=1e-8), label
    backward = text.split("Backward pass (funcnn.backward_trace")[1]
    for label, expected in BACKWARD.items():
        assert _value(backward, label) == pytest.approx(expected, rel=1e-5), label
    assert "0.291027924" in text  # the note on the texts' rounded figure
    after = text.split("After 10000 steps:")[1]
    assert _value(after, "E_total after 10000 steps") == pytest.approx(
        3.5102e-05, abs=1e-6
    )
    assert _value(after, "out_o1") == pytest.approx(0.015914, abs=1e-6)
    assert _value(after, "out_o2") == pytest.approx(0.984064, abs=1e-6)


def test_gradcheck_report_runs_and_prints_tables():
    run = _run(
        "gradcheck_report.py",
        "--checks",
        "ops",
        "lenet",
        "--max-coords",
        "4",
        "--directions",
        "1",
        "--data",
        "random",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.count("gradcheck: ") == 8
    assert "autodiff aborts XLA:CPU here" in out
    assert re.search(r"leaf\s+shape\s+ad abs\s+ad rel\s+FD abs\s+FD rel", out)
    assert "params['00_conv']['w']" in out
    assert re.search(r"8 gradient checks, 0 failed", out)


def test_gradcheck_report_exits_nonzero_on_a_failure(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "gradcheck_report", EXPERIMENTS / "gradcheck_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def wrong_avg_pool(x, window, *, grad="custom", **kwargs):
        # The true values, but twice the true gradient on the custom path.
        y = module.funcnn.avg_pool2d(x, window, grad=grad, **kwargs)
        return 2 * y - jax.lax.stop_gradient(y) if grad == "custom" else y

    monkeypatch.setattr(
        module,
        "OP_CASES",
        [("wrong avg_pool2d", wrong_avg_pool, [(1, 1, 4, 4)], dict(window=2), True)],
    )
    assert module.main(["--checks", "ops", "--max-coords", "4"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: wrong avg_pool2d" in out
    assert "FAIL (autodiff, FD)" in out


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_determinism_digest_sees_one_bit():
    det = _load("determinism")
    tree = {"w": np.zeros((3, 2), np.float32), "b": np.arange(3, dtype=np.int32)}
    flipped = {"w": tree["w"].copy(), "b": tree["b"]}
    flipped["w"].view(np.uint32)[1, 1] ^= 1  # one ulp away from zero
    assert det.digest(tree) == det.digest({k: v.copy() for k, v in tree.items()})
    assert det.digest(tree) != det.digest(flipped)
    assert det.digest(tree) != det.digest({**tree, "w": tree["w"].reshape(2, 3)})
    assert det.digest(jax.random.key(3)) == det.digest(jax.random.key(3))
    assert det.digest(jax.random.key(3)) != det.digest(jax.random.key(4))


def test_determinism_compare_verdicts():
    det = _load("determinism")
    a = {"digest": "aa", "losses": [1.0, 0.5]}
    assert det.compare([a, dict(a)]) == {
        "ran": True,
        "identical": True,
        "max_loss_diff": 0.0,
    }
    b = {"digest": "bb", "losses": [1.0, 0.25]}
    assert det.compare([a, b]) == {
        "ran": True,
        "identical": False,
        "max_loss_diff": 0.25,
    }
    verdict = det.compare([a, {"error": "select_and_scatter not supported"}])
    assert not verdict["ran"] and "select_and_scatter" in verdict["error"]


def test_determinism_script_on_cpu(tmp_path):
    """On CPU both modes compile, run and repeat bit for bit in fresh processes."""
    out = tmp_path / "det.json"
    proc = _run(
        "determinism.py",
        *("--model", "lenet", "--steps", "2", "--batch-size", "4", "--out", str(out)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for grad in ("custom", "autodiff"):
        mode = report["modes"][grad]
        assert mode["ran"] and mode["identical"], mode
        assert len(mode["runs"][0]["losses"]) == 2
        assert f"| {grad} | yes | yes | 0 |" in proc.stdout

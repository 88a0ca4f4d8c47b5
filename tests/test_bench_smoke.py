"""Smoke test of the benchmark script: it runs end to end and writes its outputs.

No timing assertions: the numbers only have to exist and be finite.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "bench.py"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_writes_json_markdown_and_png(quick_run):
    out, stdout = quick_run
    for name in ("results.json", "results.md", "bench.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Targets" in stdout and "## Compute" in stdout


def test_every_section_has_numbers(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["ops"] and results["train"] and results["memory"]
    for entry in results["ops"].values():
        times = entry["jax"]["times"]
        for part in entry["case"]["parts"]:
            for grad in ("custom", "autodiff"):
                assert _finite(times[f"{part}/{grad}"]["median_ms"])
    for entry in results["train"].values():
        for grad in ("custom", "autodiff"):
            stats = entry["jax"]["times"][grad]
            assert _finite(stats["median_ms"]) and _finite(stats["images_per_s"])
            # XLA's cost analysis counts the step's FLOPs; the rate follows.
            flops = entry["jax"]["flops"][grad]
            rate = flops / (stats["median_ms"] / 1e3) / 1e12
            assert flops > 0 and stats["tflops_per_s"] == pytest.approx(rate)
    memory = results["memory"]
    for res in memory["residuals"].values():
        assert _finite(res["custom"]["total_bytes"])
        assert _finite(res["autodiff"]["total_bytes"])
    assert any(_finite(row.get("peak_mb")) for row in memory["peak"])
    for row in results["targets"]:
        assert row["result"] in ("PASS", "FAIL", "n/a")


def test_torch_side_when_available(quick_run):
    pytest.importorskip("torch")
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert "torch_error" not in results["meta"], results["meta"].get("torch_error")
    for entry in results["ops"].values():
        assert _finite(entry["torch"]["times"]["fwdbwd/torch"]["median_ms"])
    for entry in results["train"].values():
        assert _finite(entry["torch"]["times"]["torch"]["images_per_s"])


def test_markdown_tables_match_json(quick_run):
    out, _ = quick_run
    text = (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for name in results["ops"]:
        assert name in text
    for model in results["train"]:
        assert f"| {model} |" in text


@pytest.mark.parametrize("section", ["train", "ops"])
def test_chart_with_one_section(tmp_path, section):
    """`--only train` (or `--only ops`) results chart without the other panel."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import report

    stats = {"median_ms": 12.5, "images_per_s": 1024.0}
    entry = {"jax": {"times": {"custom": stats, "autodiff": stats}}}
    if section == "ops":
        entry = {"jax": {"times": {"fwdbwd/custom": stats, "fwdbwd/autodiff": stats}}}
    path = tmp_path / "bench.png"
    report.chart({section: {"case": entry}}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_tflops_lookup():
    sys.path.insert(0, str(ROOT))
    from benchmarks.jax_side import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3")[0] == 494.7
    assert peak_tflops("NVIDIA H100 PCIe")[0] == 378.0
    assert peak_tflops("NVIDIA H100 PCIe", 100.0) == (100.0, "--peak-tflops")
    peak, source = peak_tflops("cpu")
    assert peak is None and "--peak-tflops" in source


def test_same_convolutions_in_the_quick_run(quick_run):
    """The quick grid's conv has 36 taps: both modes compile to the same convs."""
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    convs = [e for e in results["ops"].values() if e["case"]["op"] == "conv2d"]
    assert convs and all(e["jax"]["same_convolutions"] is True for e in convs)


def test_convolutions_tell_the_formulations_apart():
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp

    from benchmarks.jax_side import convolutions
    from funcnn import ops

    def compiled(c_in, grad):
        x, w = jnp.ones((2, c_in, 8, 8)), jnp.ones((4, c_in, 3, 3))
        f = jax.jit(jax.grad(lambda w: ops.conv2d(x, w, padding=1, grad=grad).sum()))
        return convolutions(f.lower(w).compile())

    # 36 taps: the direct rule, the same convolutions as autodiff.
    assert compiled(4, "custom") == compiled(4, "autodiff") != []
    # 9 taps: the patches formulation, matrix products in place of convolutions.
    assert compiled(1, "custom") != compiled(1, "autodiff")


def _stats(median, q1, q3):
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3}


@pytest.mark.parametrize(
    "same, custom, result",
    [
        (True, _stats(11.0, 10.5, 11.5), "PASS"),  # same program: noise
        (False, _stats(11.0, 10.9, 11.5), "FAIL"),  # 1.10, IQRs overlap: over TIE
        (False, _stats(10.4, 10.2, 10.6), "PASS"),  # 1.04, IQRs overlap: a tie
        (False, _stats(9.0, 8.9, 9.1), "PASS"),
    ],
)
def test_conv_target_verdicts(same, custom, result):
    sys.path.insert(0, str(ROOT))
    from benchmarks import report

    entry = {
        "case": {"op": "conv2d"},
        "jax": {
            "times": {"fwdbwd/custom": custom, "fwdbwd/autodiff": _stats(10, 9, 11)},
            "same_convolutions": same,
        },
    }
    [row] = report.targets({"ops": {"conv": entry}})
    assert row["result"] == result
    assert ("same compiled convolutions" in row["detail"]) == same

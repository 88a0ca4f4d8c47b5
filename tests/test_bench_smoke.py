"""Smoke test of the benchmark script, and unit tests of how it judges its targets.

No timing assertions on real runs: their numbers only have to exist and be finite.
The verdicts are tested on made-up timings on both sides of each threshold.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "bench.py"
sys.path.insert(0, str(ROOT))

from benchmarks import cases, remote, report, targets, timing  # noqa: E402

IDENTICAL = targets.IDENTICAL


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs a command from the repository root; it must succeed."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --torch-device cuda: on a machine without CUDA the worker falls back to the
    # CPU and says so (the forced-device path; "auto" is tested below).
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(out)]
    return out, _run([*cmd, "--torch-device", "cuda"]).stdout


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
    [jax_row] = [row for row in memory["peak"] if row["framework"] == "jax"]
    for key in ("before_mb", "compile_mb", "baseline_mb", "peak_mb", "step_mb"):
        assert _finite(jax_row[key]), key
    # The step figure is the peak of the timed steps over the post-warm-up RSS.
    assert jax_row["step_mb"] == pytest.approx(
        jax_row["peak_mb"] - jax_row["baseline_mb"]
    )
    assert jax_row["compile_mb"] > 0
    for row in results["targets"]:
        assert row["result"] in ("PASS", "FAIL", "inconclusive", "n/a", IDENTICAL)
    for entry in results["ops"].values():
        assert isinstance(entry["jax"]["same_program"], bool)


def test_layout_and_layer_stats_sections(quick_run):
    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    samples = results["layout"]["samples"]
    assert set(samples) == {"off", "on"}
    for flag in ("off", "on"):
        # Both layouts ran under both flag settings, each with its timed repeats.
        for layout in ("NCHW", "NHWC"):
            for name in (f"train {layout} custom", f"maxpool {layout} custom bwd"):
                times = samples[flag][name]
                assert len(times) == results["layout"]["repeats"], (flag, name)
                assert all(_finite(t) and t > 0 for t in times)
    stats = results["layer_stats"]
    ratio = stats["layer_stats"]["median_ms"] / stats["plain"]["median_ms"]
    assert stats["ratio"] == pytest.approx(ratio)
    assert stats["metrics"]["layer_stats"] > stats["metrics"]["plain"]
    assert "## Layout" in stdout and "## Per-layer statistics" in stdout


def test_peers_section(quick_run):
    """With flax and equinox installed (the bench extra), every framework's step
    ran, on models with the same parameter count as funcnn's, and each peer has
    its verdict row. (Skipped where they are not installed: the `test` extra
    leaves them out; the n/a path is the next test.)"""
    pytest.importorskip("flax")
    pytest.importorskip("equinox")
    from benchmarks import peers

    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    section = results["peers"]
    assert section["available"], section.get("reason")
    [(name, entry)] = section["cases"].items()
    # LeNet-5 by hand: 6*25+6 + 16*6*25+16 + 400*120+120 + 120*84+84 + 84*10+10.
    assert entry["params"] == dict.fromkeys(("funcnn", *peers.PEERS), 61706)
    assert set(entry["times"]) == {
        "funcnn custom NCHW", "funcnn custom NHWC", *peers.PEERS
    }  # fmt: skip
    for label, stats in entry["times"].items():
        assert _finite(stats["median_ms"]) and _finite(entry["gflop"][label]), label
    # The same architecture: XLA counts the same FLOPs within 10% in every step.
    flops = list(entry["gflop"].values())
    assert max(flops) <= 1.1 * min(flops), entry["gflop"]
    rows = [r for r in results["targets"] if r["target"].startswith(f"{name} step")]
    assert [r["target"].split(" / ")[1] for r in rows] == [
        peers.LABELS[p] for p in peers.PEERS
    ]
    assert all(r["result"] in ("PASS", "FAIL", "inconclusive") for r in rows)
    assert "## Peers" in stdout and "Flax NNX" in stdout


def test_peers_section_without_flax_or_equinox(tmp_path):
    """flax and equinox absent (their imports fail): the section says n/a, and
    why, and the run still succeeds."""
    runner = (
        "import runpy, sys; "
        "sys.modules.update(flax=None, equinox=None); "  # `import flax` now fails
        f"sys.argv = [{str(SCRIPT)!r}, '--only', 'peers', '--quick', "
        f"'--out-dir', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    proc = _run([sys.executable, "-c", runner])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["peers"]["available"] is False
    assert "funcnn[bench]" in results["peers"]["reason"]
    [row] = results["targets"]
    assert row["result"] == "n/a" and "funcnn[bench]" in row["reason"]
    assert "## Peers" in proc.stdout and "n/a: " in proc.stdout


def test_torch_side_when_available(quick_run, require_torch):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert "torch_error" not in meta, meta.get("torch_error")
    device = meta["torch_device"]
    assert device == "cuda" or "CUDA requested" in meta["torch_device_note"]
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
    stats = {"median_ms": 12.5, "images_per_s": 1024.0}
    entry = {"jax": {"times": {"custom": stats, "autodiff": stats}}}
    if section == "ops":
        entry = {"jax": {"times": {"fwdbwd/custom": stats, "fwdbwd/autodiff": stats}}}
    path = tmp_path / "bench.png"
    report.chart({section: {"case": entry}}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_tflops_lookup():
    from benchmarks.jax_side import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3")[0] == 494.7
    assert peak_tflops("NVIDIA H100 PCIe")[0] == 378.0
    assert peak_tflops("NVIDIA H100 PCIe", 100.0) == (100.0, "--peak-tflops")
    peak, source = peak_tflops("cpu")
    assert peak is None and "--peak-tflops" in source


def test_canonical_hlo_compares_whole_programs():
    """Equal exactly when the optimized programs are, whatever the names."""
    import jax
    import jax.numpy as jnp

    from benchmarks.jax_side import canonical_hlo
    from funcnn import ops

    def hlo(fn, *args):
        return canonical_hlo(jax.jit(fn).lower(*args).compile())

    def scaled_sine(x):
        return 2 * jnp.sin(x)

    def another_name(y):
        return 2 * jnp.sin(y)

    x = jnp.ones((3, 4), jnp.float32)
    text = hlo(scaled_sine, x)
    assert text == hlo(another_name, x)
    assert "metadata=" not in text and "scaled_sine" not in text
    assert text != hlo(lambda x: 2 * jnp.cos(x), x)  # one instruction differs
    assert text != hlo(lambda x: 3 * jnp.sin(x), x)  # one constant differs

    def conv_grad(c_in, grad):
        xs, w = jnp.ones((2, c_in, 8, 8)), jnp.ones((4, c_in, 3, 3))
        return hlo(jax.grad(lambda w: ops.conv2d(xs, w, padding=1, grad=grad).sum()), w)

    # 9 taps: the patches formulation, matrix products in place of convolutions.
    assert conv_grad(1, "custom") != conv_grad(1, "autodiff")
    assert conv_grad(1, "custom") == conv_grad(1, "custom")


# ----------------------------------------------------- verdicts on made-up times


@pytest.mark.parametrize(
    "value, interval, sense, want",
    [
        (0.70, (0.65, 0.75), "<=", "PASS"),
        (0.77, (0.70, 0.85), "<=", "inconclusive"),  # a borderline PASS
        (0.83, (0.78, 0.90), "<=", "inconclusive"),  # a borderline FAIL
        (0.90, (0.85, 0.95), "<=", "FAIL"),
        (0.80, (0.80, 0.80), "<=", "PASS"),  # on the threshold meets it
        (0.79, None, "<=", "PASS"),  # no samples: the median alone
        (0.81, None, "<=", "FAIL"),
        (0.79, (0.81, 0.85), "<=", "inconclusive"),  # median and interval disagree
        (0.90, (0.85, 0.95), ">=", "PASS"),
        (0.78, (0.75, 0.82), ">=", "inconclusive"),
        (None, None, "<=", "n/a"),
    ],
)
def test_verdict_rules(value, interval, sense, want):
    assert targets.verdict(value, interval, 0.8, sense) == want


def test_ratio_interval_is_paired_and_covers_the_median():
    rng = np.random.default_rng(0)
    drift = np.linspace(1.0, 3.0, 30)  # load that slows both variants alike
    a = timing.summarize(list(drift * 1e-3 * (1 + 0.01 * rng.standard_normal(30))))
    b = timing.summarize(list(drift * 2e-3 * (1 + 0.01 * rng.standard_normal(30))))
    low, high = targets.ratio_interval(a, b)
    assert low <= targets.median_ratio(a, b) <= high
    assert 0.45 < low and high < 0.55  # pairs cancel the drift
    few = {**a, "samples_ms": a["samples_ms"][:2]}
    assert targets.ratio_interval(few, b) is None


def _stats(median_ms, spread, seed, n=20):
    rng = np.random.default_rng(seed)
    seconds = median_ms * (1 + spread * rng.uniform(-1, 1, n)) / 1e3
    return timing.summarize(list(seconds))


META = {
    "command": "python experiments/bench.py (made-up timings)",
    "jax": "0",
    "backend": "cpu",
    "device": "cpu",
    "torch": "0",
    "torch_device": "cpu",
    "cpus": 2,
    "threads": 2,
    "repeats": 20,
    "loadavg_start": 0.0,
    "loadavg_end": 0.0,
    "xla_flags": "",
}


def _fake_results(quick, factor, spread, seed=0, **meta):
    """Every custom time is `factor` times its autodiff and torch twins: each
    custom/x ratio is about `factor`, the max-pool speed-up about 1/factor."""
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))
    ops = {}
    for case in cases.op_cases(quick):
        times = {}
        for part in case["parts"]:
            times[f"{part}/autodiff"] = _stats(10.0, spread, next(seeds))
            times[f"{part}/custom"] = _stats(10.0 * factor, spread, next(seeds))
        torch = {f"{p}/torch": _stats(10.0, spread, next(seeds)) for p in case["parts"]}
        jax_side = {"times": times, "same_program": False}
        ops[case["name"]] = {"case": case, "jax": jax_side, "torch": {"times": torch}}
    train = {}
    for case in cases.train_cases(quick):
        times = {
            "autodiff": _stats(10.0, spread, next(seeds)),
            "custom": _stats(10.0 * factor, spread, next(seeds)),
        }
        train[case["model"]] = {
            "case": case,
            "jax": {"times": times, "same_program": False},
            "torch": {"times": {"torch": _stats(10.0, spread, next(seeds))}},
        }
    results = {"meta": {**META, "quick": quick, **meta}, "ops": ops, "train": train}
    results["targets"] = targets.targets(results)
    return results


def _target_rows(markdown: str) -> list[list[str]]:
    section = markdown.split("## Targets")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def _meets(value: float, threshold: str) -> bool:
    sense, bound = threshold.split()
    return value <= float(bound) if sense == "<=" else value >= float(bound)


# Around each threshold (4x speed-up = 0.25, 0.8, 1.0) and far from them.
FACTORS = (0.15, 0.24, 0.25, 0.26, 0.5, 0.78, 0.8, 0.82, 0.97, 1.0, 1.03, 1.3)


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_no_pass_beyond_a_threshold(quick):
    """Made-up timings on both sides of every threshold, tight and noisy: a PASS in
    the printed table always meets its threshold, as measured and as printed;
    FAIL always misses it; inconclusive always has an interval across it."""
    seen = set()
    for spread in (0.002, 0.05, 0.4):
        for seed, factor in enumerate(FACTORS):
            results = _fake_results(quick, factor, spread, seed)
            rows = _target_rows(report.markdown(results))
            assert len(rows) == len(results["targets"]) >= 3
            for cells, row in zip(rows, results["targets"]):
                name, measured, threshold, interval, result, _ = cells
                assert name == row["target"] and result == row["result"]
                seen.add(result)
                if result == "PASS":
                    assert _meets(row["value"], threshold), cells
                    assert _meets(float(measured), threshold), cells
                    assert all(_meets(v, threshold) for v in row["interval"]), cells
                elif result == "FAIL":
                    assert not _meets(row["value"], threshold), cells
                else:
                    assert result == "inconclusive", cells
                    assert interval != "-", cells
                    low, high = row["interval"]  # the printed ends are rounded
                    assert _meets(low, threshold) != _meets(high, threshold), cells
    assert seen == {"PASS", "FAIL", "inconclusive"}


def test_identical_programs_are_not_judged():
    results = _fake_results(False, 1.31, 0.002)
    conv = next(n for n, e in results["ops"].items() if e["case"]["op"] == "conv2d")
    results["ops"][conv]["jax"]["same_program"] = True
    rows = {row["target"]: row for row in targets.targets(results)}
    row = rows[f"fwd+bwd custom/autodiff [{conv}]"]
    assert row["result"] == IDENTICAL and "same optimized HLO" in row["reason"]
    assert row["value"] == pytest.approx(1.31, rel=0.01)  # still shown
    others = [r for r in rows.values() if "custom/autodiff" in r["target"]]
    assert {r["result"] for r in others} == {IDENTICAL, "FAIL"}


def test_max_pool_is_judged_on_forward_plus_backward():
    results = _fake_results(False, 1.0, 0.002)
    entry = results["ops"][cases.HEADLINE_MAXPOOL]["jax"]["times"]
    entry["bwd/custom"] = _stats(1.0, 0.002, 1)  # the backward alone: 10x
    [row] = [r for r in targets.targets(results) if "max pool" in r["target"]]
    assert "fwd+bwd" in row["target"] and row["result"] == "FAIL"
    assert row["value"] == pytest.approx(1.0, rel=0.01)
    assert "backward alone 10.0" in row["reason"]


def test_torch_device_follows_the_jax_backend():
    assert remote.torch_device_for("gpu") == "cuda"
    assert remote.torch_device_for("cuda") == "cuda"
    assert remote.torch_device_for("cpu") == "cpu"
    assert remote.torch_device_for("tpu") == "cpu"
    assert remote.backends_match("gpu", "cuda") and remote.backends_match("cpu", "cpu")
    assert not remote.backends_match("gpu", "cpu")
    assert not remote.backends_match("tpu", "cpu")


@pytest.mark.parametrize(
    "meta, why",
    [
        ({"backend": "gpu", "torch_device": "cpu"}, "backends differ: JAX on gpu"),
        ({"backend": "tpu", "torch_device": "cpu"}, "backends differ: JAX on tpu"),
        ({"torch_error": "torch worker died: boom"}, "torch worker died: boom"),
    ],
)
def test_torch_targets_are_na_when_not_comparable(meta, why):
    results = _fake_results(False, 0.2, 0.002, **meta)
    if "torch_error" in meta:
        del results["meta"]["torch"]
        results["targets"] = targets.targets(results)
    rows = results["targets"]
    torch_rows = [r for r in rows if "custom/torch" in r["target"]]
    assert len(torch_rows) == 3
    assert all(r["result"] == "n/a" and why in r["reason"] for r in torch_rows)
    assert all(r["result"] == "PASS" for r in rows if r not in torch_rows)
    text = report.markdown(results)
    assert why in text
    if "torch_error" in meta:
        assert "torch_error" in text

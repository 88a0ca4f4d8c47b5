"""Tests of the learning-rules lab (experiments/learning_rules.py, the `lab`
package in experiments/lab): its optimizer against make_optimizer, the selection,
and a --quick sweep run as a subprocess, read back independently from its run
directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_cifar_recipe import write_cifar_bin

from funcnn import rules
from funcnn.training import learning_rate, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))  # the lab: experiments/lab

from lab import runs  # noqa: E402
from lab.optimizer import cosine_optimizer  # noqa: E402
from lab.sweep import choose  # noqa: E402

SCRIPT = ROOT / "experiments" / "learning_rules.py"
RULES = ["backprop", "feedback_alignment"]  # pinned: new rules must not slow CI


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_cosine_optimizer_makes_make_optimizers_updates(name):
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(3)}
    total, lr, decay = 6, 0.03, 1e-2
    ours = cosine_optimizer(name, lr, total_steps=total, weight_decay=decay)
    theirs = make_optimizer(
        name, lr, weight_decay=decay, schedule="cosine", total_steps=total
    )
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    update_ours, update_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    keys = jax.random.split(jax.random.key(0), total + 2)
    for t in range(total + 2):  # past the end, where the rate stays 0
        g = jax.tree.map(lambda p, k=keys[t]: jax.random.normal(k, p.shape), params)
        u_ours, s_ours = update_ours(g, s_ours, params)
        u_theirs, s_theirs = update_theirs(g, s_theirs, params)
        for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
        assert float(learning_rate(s_ours)) == pytest.approx(
            float(learning_rate(s_theirs)), rel=1e-6, abs=1e-12
        )
        params = optax.apply_updates(params, u_theirs)


def test_one_compiled_update_serves_every_rate_and_length():
    params = {"w": jnp.ones((2, 2))}
    update = jax.jit(cosine_optimizer("momentum", 0.1, total_steps=5).update)
    for lr, total in [(0.1, 5), (0.003, 50)]:
        state = cosine_optimizer("momentum", lr, total_steps=total).init(params)
        u, _ = update({"w": jnp.ones((2, 2))}, state, params)
        np.testing.assert_allclose(u["w"], -lr, rtol=1e-6)  # momentum 0 at t=0
    assert update._cache_size() == 1


def test_each_seed_draws_its_own_feedback_and_names_pass_through():
    assert runs.rule_value("backprop", 3) == "custom"
    fa = runs.rule_value("feedback_alignment", 2)
    assert isinstance(fa, rules.FeedbackAlignment) and fa.seed == 2
    assert runs.rule_value("sign_symmetry", 2) == "sign_symmetry"
    assert runs.rule_value("usf", 2) == "usf"
    for name in ("brsf", "frsf", "direct_feedback_alignment", "kolen_pollack"):
        assert runs.rule_value(name, 2).seed == 2
    assert set(runs.research_rules()) == set(rules.names()) - {
        "custom",
        "autodiff",
    } | set(rules.step_names())
    assert runs.default_entries()[-1] == "forward_gradient_5x"


def test_entries_name_a_rule_and_how_many_times_the_epochs():
    assert runs.parse_entry("forward_gradient_5x") == ("forward_gradient", 5)
    assert runs.parse_entry("backprop_2x") == ("backprop", 2)
    assert runs.parse_entry("usf") == ("usf", 1)
    assert runs.parse_entry("no_such_rule_5x") == ("no_such_rule_5x", 1)
    assert runs.whole_step("forward_gradient_5x") and not runs.whole_step("usf")
    # Each run's state is made with its rule, so that Kolen-Pollack's holds the
    # B of the run's seed; a whole-step rule needs nothing there.
    kp = runs.state_grad(runs.rule_value("kolen_pollack", 2))
    assert isinstance(kp, rules.KolenPollack) and kp.seed == 2
    assert runs.state_grad(runs.rule_value("forward_gradient_5x", 0)) is None


def test_choose_ranks_completed_runs_first_then_accuracy_then_order():
    def rec(lr, acc, status="completed"):
        return {"optimizer": "momentum", "lr": lr, "eval_accuracy": acc,
                "status": status}  # fmt: skip

    assert choose([rec(0.1, 0.9), rec(0.01, 0.95), rec(0.001, 0.95)]) == (
        "momentum",
        0.01,
    )
    assert choose([rec(0.1, 0.99, "diverged"), rec(0.01, 0.5)]) == ("momentum", 0.01)
    # Means over seeds: 0.1 averages 0.8, 0.01 averages 0.7.
    runs_ = [rec(0.1, 0.9), rec(0.1, 0.7), rec(0.01, 0.7), rec(0.01, 0.7)]
    assert choose(runs_) == ("momentum", 0.1)


def lab(*args, timeout=900) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    # Compiling dominates these tiny runs; level 0 compiles about twice as fast.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "sweep"
    args = ["--quick", "--rules", *RULES, "--out-dir", out, "--no-progress"]
    proc = lab(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, args, proc


def last_epoch(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"epoch"' in x][-1]


def test_quick_sweep_writes_the_results_and_the_pictures(quick):
    out, _, proc = quick
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["datasets"]) == ["digits", "mnist5k"]
    for dataset, data in summary["datasets"].items():
        assert list(data["rules"]) == RULES
        for rule, r in data["rules"].items():
            # Recomputed from the final runs' own logs: the test error per seed.
            errors = [
                100 * (1 - last_epoch(out / dataset / "final" / rule / f"seed{s}")
                       ["test_accuracy"])
                for s in (0, 1)
            ]  # fmt: skip
            np.testing.assert_allclose(r["test_error"]["per_seed"], errors)
            assert r["test_error"]["mean"] == pytest.approx(np.mean(errors))
            assert r["test_error"]["std"] == pytest.approx(np.std(errors, ddof=1))
            # The selection saw the validation split only: 20% of 256 images.
            chosen = r["chosen"]
            val = {}
            for lr in (0.01, 0.001):
                line = last_epoch(
                    out / dataset / "select" / rule / f"momentum-{lr:g}-seed0"
                )
                assert line["test_count"] == 51
                val[lr] = line["test_accuracy"]
            assert chosen["lr"] == max(val, key=lambda lr: (val[lr], lr))
        measured = data["rules"]["feedback_alignment"]["final_angles"]
        assert {k.split("/")[0] for k in measured} == {
            "align_grad", "align_delta", "align_weight", "norm_ratio",
        }  # fmt: skip
        # Per layer: every conv and dense layer of the task's model.
        layers = {k.split("/")[1] for k in measured}
        assert len(layers) == 5 and all("conv" in n or "dense" in n for n in layers)
        assert not data["rules"]["backprop"]["final_angles"]
        timed = {rule: r["step_time"] for rule, r in data["rules"].items()}
        assert timed["backprop"]["ratio"] == 1.0 and timed["backprop"]["rounds"] == 2
        fa = timed["feedback_alignment"]
        assert fa["min_ms"] <= fa["median_ms"] <= fa["max_ms"]
        assert fa["ratio"] == fa["median_ms"] / timed["backprop"]["median_ms"]
    assert summary["datasets"]["mnist5k"]["biotorch"]["errors"]["backprop"] == 0.91
    text = (out / "results.md").read_text()
    assert "| `feedback_alignment` | momentum" in text
    assert "BioTorch, LeNet on full MNIST" in text and "Targets (issue 18):" in text
    from matplotlib.image import imread

    for name in ("accuracy.png", "alignment.png"):
        assert imread(out / name).ndim == 3
    assert "wrote" in proc.stdout


def test_the_same_command_skips_finished_runs_and_resumes_a_stopped_one(quick):
    out, args, _ = quick
    run = out / "digits" / "final" / "backprop" / "seed1"
    before = (run / "metrics.jsonl").read_text()
    record = json.loads((run / "result.json").read_text())
    (run / "result.json").unlink()  # as if stopped after its last checkpoint
    proc = lab(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = [line for line in proc.stdout.splitlines() if "s/epoch" in line]
    assert len(trained) == 1 and "digits backprop (final" in trained[0]
    assert (run / "metrics.jsonl").read_text() == before  # nothing trained again
    again = json.loads((run / "result.json").read_text())
    assert again["eval_accuracy"] == record["eval_accuracy"]
    assert again["curve"] == record["curve"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rules", "backprop", "no_such_rule"], "got ['no_such_rule']"),
        (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
        (["--lrs", "0"], "argument --lrs: expected a finite number > 0, got '0'"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--candidates", "lion:0.1"], "expected OPTIMIZER:LR with OPTIMIZER in"),
        (["--candidates", "adam"], "expected a finite number > 0, got ''"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    from lab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_candidates_replace_the_optimizers_times_the_rates():
    from lab.cli import parse_args
    from lab.sweep import Plan
    from lab.tasks import TASKS

    args = parse_args(["--candidates", "momentum:0.01", "adam:3e-4"])
    plan = Plan([], [], [0], [0], args.optimizers, Path("."), pairs=args.candidates)
    assert plan.candidates(TASKS["digits"]) == [("momentum", 0.01), ("adam", 3e-4)]
    plan.pairs = None
    assert plan.candidates(TASKS["digits"]) == [("momentum", lr) for lr in
                                                (0.01, 0.003, 0.001)]  # fmt: skip
    # A rule's extra candidates join the task's, not given pairs.
    assert plan.candidates(TASKS["digits"], "forward_gradient_5x")[-1] == ("adam", 3e-3)
    plan.pairs = args.candidates
    assert plan.candidates(TASKS["digits"], "forward_gradient") == args.candidates


def test_kolen_pollack_trains_with_its_own_weight_decay_on_mnist5k():
    from lab.sweep import for_rule
    from lab.tasks import TASKS

    task = TASKS["mnist5k"]
    assert for_rule(task, "kolen_pollack").weight_decay == 5e-2
    assert for_rule(task, "kolen_pollack_2x").weight_decay == 5e-2
    assert for_rule(task, "feedback_alignment") == task
    for name in ("digits", "cifar10"):
        assert for_rule(TASKS[name], "kolen_pollack") == TASKS[name]


def test_unreadable_data_is_a_one_line_error(tmp_path, capsys):
    from lab.cli import main

    (tmp_path / "cifar").mkdir()
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar")]
    assert main([*argv, "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("learning_rules.py: error: load_cifar10: expected")


@pytest.mark.parametrize(
    "rule", ["backprop", pytest.param("feedback_alignment", marks=pytest.mark.slow)]
)
def test_cifar10_resnet20_column_runs_a_few_steps(tmp_path, rule):
    # BioTorch's CIFAR-10 column, on tiny files in the official binary format.
    write_cifar_bin(tmp_path / "cifar", n_train=8, n_test=8)
    out = tmp_path / "sweep"
    proc = lab(
        "--dataset", "cifar10", "--model", "resnet20", "--data-dir",
        tmp_path / "cifar", "--quick", "--rules", rule, "--seeds", "0", "--lrs",
        "0.1", "--batch-size", "8", "--out-dir", out, "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())["datasets"]["cifar10"]
    assert data["task"]["model"] == "resnet20" and data["train_images"] == 40
    assert data["task"]["augment"] == "crop-flip"
    assert data["biotorch"]["errors"][rule] == {"backprop": 8.63}.get(rule, 32.16)
    line = last_epoch(out / "cifar10" / "final" / rule / "seed0")
    assert line["step"] == 5 and np.isfinite(line["loss"])


def test_a_rule_whose_every_run_diverged_is_reported_not_fatal(tmp_path):
    from lab import plots, report
    from lab.tasks import TASKS

    def rec(seed, status, acc, seconds):
        angle = {"align_grad/00_conv": None}  # a dead layer's angle is undefined
        return {
            "seed": seed, "optimizer": "momentum", "lr": 0.01, "status": status,
            "epochs": 1, "batch_size": 32,
            "eval_accuracy": acc, "seconds_per_epoch": seconds, "final_angles": angle,
            "curve": [{"epoch": 1, "eval_accuracy": acc, **angle}],
        }  # fmt: skip

    results = {"digits": {
        "backprop": {"selection": [], "chosen": ["momentum", 0.01],
                     "final": [rec(0, "completed", 0.98, 0.2)]},
        "sign_symmetry": {"selection": [rec(0, "diverged", 0.1, None)],
                          "chosen": ["momentum", 0.01],
                          "final": [rec(0, "diverged", 0.1, None)]},
    }}  # fmt: skip
    summary = report.summarise(results, TASKS, {"digits": (1437, 360)})
    text = report.markdown(summary)
    row = (
        "| `sign_symmetry` | momentum 0.01 | 44 | 90.00 ± 0.00 | 90.00 (diverged: "
        "seeds [0])"
    )
    assert row + " | – | – |" in text  # no time, no ratio to backprop
    assert "**10.00 (diverged)**" in text
    # Drawn without warnings (they are errors here) though every angle is NaN.
    plots.plot_accuracy(summary, tmp_path / "accuracy.png")
    assert plots.plot_alignment(summary, tmp_path / "alignment.png")


def test_a_sweep_directory_refuses_other_data(quick):
    out, args, _ = quick
    proc = lab(*args, "--limit", "300")  # other images than the sweep's 256
    assert proc.returncode == 2
    assert "expected a run with this sweep's settings and data" in proc.stderr
    assert "train_data" in proc.stderr


def test_forward_gradients_run_once_and_again_k_times_as_long(tmp_path):
    out = tmp_path / "fg"
    proc = lab(
        "--quick", "--dataset", "digits", "--rules", "backprop", "forward_gradient",
        "forward_gradient_2x", "--seeds", "0", "--lrs", "0.01", "--timing", "1", "2",
        "--out-dir", out, "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())["datasets"]["digits"]
    fg, longer = data["rules"]["forward_gradient"], data["rules"]["forward_gradient_2x"]
    # Selected like every rule, with Adam 3e-3 as its extra candidate.
    tried = {(v["optimizer"], v["lr"]) for v in fg["validation"]}
    assert tried == {("momentum", 0.01), ("adam", 0.003)}
    # The 2x entry reuses that choice: no selection runs of its own.
    assert (
        longer["chosen"] == fg["chosen"] and longer["selected_as"] == "forward_gradient"
    )
    assert not (out / "digits" / "select" / "forward_gradient_2x").exists()
    # Twice the steps of backprop's final run, from the runs' own logs.
    steps = {
        rule: last_epoch(out / "digits" / "final" / rule / "seed0")["step"]
        for rule in ("backprop", "forward_gradient", "forward_gradient_2x")
    }
    assert steps["forward_gradient"] == steps["backprop"] > 0
    assert steps["forward_gradient_2x"] == 2 * steps["backprop"] == longer["steps"]
    assert longer["step_time"] == fg["step_time"]  # the same compiled step
    assert not fg["final_angles"] and not longer["final_angles"]
    text = (out / "results.md").read_text()
    assert "| `forward_gradient` | n/a: no backward pass to compare |" in text

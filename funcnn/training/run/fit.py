"""`fit`: the training loop, built from the run pieces of this package.

    state, summary = funcnn.fit(
        train_step, state, lambda epoch: batches(x, y, 32, seed=0, epoch=epoch),
        epochs=10, steps_per_epoch=len(x) // 32,
        eval_step=eval_step, eval_data=(x_test, y_test), out_dir="runs/a",
    )

Everything the loop carries from step to step is in the checkpoint: the state,
the position (epoch and batch within it), the running metric sums and the
times. `train_batches(epoch)` must give the same batches for the same epoch, so
a resumed run skips into the epoch and goes on exactly as one that never
stopped: the same states bit for bit on CPU, the same metrics lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from funcnn.training.run.loop import Loop
from funcnn.training.run.rundir import RunDir, note_to_stderr
from funcnn.training.run.stopping import SignalStop
from funcnn.training.run.summary import FitSummary


def _epoch_source(train_batches) -> Callable[[int], Iterable]:
    if callable(train_batches):
        return cast(Callable[[int], Iterable], train_batches)
    if iter(train_batches) is train_batches:
        raise TypeError(
            "fit: expected train_batches to be a function epoch -> batches, or a "
            f"re-iterable collection, got the one-shot {type(train_batches).__name__}"
            ". Pass e.g. lambda epoch: funcnn.data.batches(x, y, 32, seed=0, "
            "epoch=epoch)."
        )
    return lambda epoch: train_batches  # type: ignore[return-value]


def _check_count(name: str, value, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"fit: expected {name} to be an int >= {low}, got {value!r}.")


def fit(
    train_step: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
    state: Any,
    train_batches: Callable[[int], Iterable] | Iterable,
    *,
    epochs: int,
    steps_per_epoch: int | None = None,
    eval_step: Callable | None = None,
    eval_data: tuple[Any, Any] | None = None,
    eval_batch_size: int = 500,
    out_dir: str | Path | RunDir | None = None,
    resume: bool = False,
    resume_step: int | None = None,
    max_steps: int | None = None,
    log_every: int = 10,
    keep: int | None = 3,
    config: Mapping[str, Any] | None = None,
    data_fingerprint: Mapping[str, Any] | None = None,
    allow_data_change: bool = False,
    reductions: Mapping[str, str] | None = None,
    progress: bool = True,
    plot: Callable[[Path | None, Any], None] | None = None,
    stop: SignalStop | None = None,
    note: Callable[[str], None] = note_to_stderr,
) -> tuple[Any, FitSummary]:
    """Trains `state` with `train_step` for `epochs` epochs and writes a run.

    Args:
        train_step: `(state, batch) -> (state, metrics)`, e.g. from
            `funcnn.make_train_step` or your own; `metrics` is a dict of scalars
            with any names. It may donate `state`: use the returned state.
        state: the initial state, any pytree of arrays (e.g. a `TrainState`);
            on resume, the template the checkpoint is loaded into.
        train_batches: `epoch -> iterable of batches` (the same batches for the
            same epoch; skipped batches of a resumed epoch are drawn and
            dropped, so keep it lazy), or a list of batches for every epoch.
            The examples of a batch are counted along the leading axis of its
            first leaf.
        epochs: the number of epochs.
        steps_per_epoch: the batches taken from each epoch; None takes all.
        eval_step: `funcnn.make_eval_step(...)`, with `eval_data`: the test
            metrics of `funcnn.evaluate` at every epoch end, logged as "test_*".
        eval_data: the test set `(x, y)` for `eval_step`.
        eval_batch_size: examples per evaluation call.
        out_dir: the run directory (a path or an open `RunDir`): config.json,
            metrics.jsonl, checkpoints. None keeps nothing on disk.
        resume: continue the run in `out_dir` from its newest intact checkpoint
            (a directory without one starts at step 0).
        resume_step: continue from this checkpoint step instead.
        max_steps: stop (and save) once this step is reached.
        log_every: steps per metrics line; every epoch also ends a line.
        keep: checkpoints to keep (one is saved per epoch and at the end).
        config: JSON-able settings, written to config.json and every checkpoint,
            with "epochs", "steps_per_epoch", "total_steps", "out_dir",
            "jax_version" and "data" (the fingerprint) set by `fit`.
        data_fingerprint: `funcnn.training.data_fingerprint(x, y)`; a resume with
            another raises `DataChangedError`, unless `allow_data_change`.
        reductions: how metrics aggregate per line: name -> "mean" (default),
            "sum" or "last"; "nonfinite" sums and "lr" takes the last value.
        progress: draw a progress bar on stderr (process 0 only).
        plot: `plot(run_dir, state)`, called when the run completes or reaches
            `max_steps` (not after a signal).
        stop: a `SignalStop` already installed by the caller; by default `fit`
            installs its own for SIGINT and SIGTERM while it runs.
        note: prints one-line notes and warnings (default: stderr).

    Returns:
        `(state, summary)`: the final state and a `FitSummary`. After a signal
        the state is saved and `summary.exit_code` is 130 or 143.

    Raises:
        NonFiniteError: every step of an epoch was skipped (metric "nonfinite").
        RunDirError, ResumeError, DataChangedError: the run directory cannot
            be used or resumed; the message says why.
    """
    _check_count("epochs", epochs, 1)
    _check_count("steps_per_epoch", steps_per_epoch, 1, optional=True)
    _check_count("max_steps", max_steps, 1, optional=True)
    _check_count("resume_step", resume_step, 0, optional=True)
    _check_count("log_every", log_every, 1)
    _check_count("eval_batch_size", eval_batch_size, 1)
    if (eval_step is None) != (eval_data is None):
        raise ValueError(
            "fit: expected eval_step and eval_data together, got only "
            f"{'eval_step' if eval_data is None else 'eval_data'}."
        )
    if resume_step is not None and out_dir is None:
        raise ValueError("fit: expected an out_dir to resume from, got none.")
    source = _epoch_source(train_batches)
    own_run = out_dir is not None and not isinstance(out_dir, RunDir)
    if out_dir is None or isinstance(out_dir, RunDir):
        run = out_dir
    else:
        run = RunDir(
            out_dir, resume=resume or resume_step is not None, keep=keep, note=note
        )
    own_stop = stop is None
    stop = SignalStop().install() if stop is None else stop
    try:
        loop = Loop(
            source, run, stop, note, epochs=epochs, per_epoch=steps_per_epoch,
            max_steps=max_steps, log_every=log_every, plot=plot,
            evaluation=(eval_step, eval_data, eval_batch_size),
        )  # fmt: skip
        state = loop.start(
            state, resume_step, config, data_fingerprint, allow_data_change, reductions
        )
        return loop.train(train_step, state, progress)
    finally:
        if own_stop:
            stop.uninstall()
        if own_run and run is not None:
            run.close()

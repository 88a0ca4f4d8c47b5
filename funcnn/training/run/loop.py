"""The loop behind `funcnn.fit`: one object per call, holding the run's position.

`start` restores a checkpoint (or begins at step 0), writes config.json and opens
metrics.jsonl; `train` runs the epochs. What a checkpoint holds besides the
state, `progress`, is exactly what `train` needs to go on as if it had never
stopped: the epoch, the batches taken of it, the running metric sums, and the
times so far.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import jax

from funcnn.training.run.errors import NonFiniteError, ResumeError
from funcnn.training.run.metrics import (
    MetricsLog,
    StepMetrics,
    decode_floats,
    dumps,
    encode_floats,
)
from funcnn.training.run.progress import ProgressBar
from funcnn.training.run.rundir import RunDir, check_data
from funcnn.training.run.stopping import SignalStop
from funcnn.training.run.summary import FitSummary, split_record
from funcnn.training.step import evaluate

_TIMES = ("train", "compile", "eval", "save", "wall")


class Loop:
    """The state of one `fit` call: `start` restores or begins, `train` loops.

    Args (see `funcnn.fit`): source (`epoch -> batches`), run_dir (a `RunDir` or
    None), stop (a `SignalStop`), note, epochs, per_epoch (steps_per_epoch),
    max_steps, log_every, evaluation (`(eval_step, (x, y), batch_size)`), plot.
    """

    def __init__(
        self,
        source: Callable[[int], Iterable],
        run_dir: RunDir | None,
        stop: SignalStop,
        note: Callable[[str], None],
        *,
        epochs: int,
        per_epoch: int | None,
        max_steps: int | None,
        log_every: int,
        evaluation: tuple[Callable | None, Any, int],
        plot: Callable | None,
    ):
        self.source, self.run_dir, self.stop, self.note = source, run_dir, stop, note
        self.epochs, self.per_epoch, self.log_every = epochs, per_epoch, log_every
        self.max_steps = math.inf if max_steps is None else max_steps
        self.eval, self.plot = evaluation, plot
        self.step = self.epoch = self.batch = 0  # batch: taken of this epoch
        self.examples = 0  # train examples timed in times["train"]
        self.times: dict[str, float] = {k: 0.0 for k in _TIMES}  # wall: earlier calls
        self.checkpoint: Path | None = None
        self.saved_step: int | None = None
        self.test: dict = {}
        self.test_step: int | None = None
        self.t_start = time.perf_counter()
        self.rate_mark = (self.t_start, 0)
        self.config: dict = {}
        self.compiled = False  # whether this call ran its first step

    def _elapsed(self, since: float) -> float:
        return time.perf_counter() - since

    def _wall(self) -> float:
        return self.times["wall"] + self._elapsed(self.t_start)

    def start(self, state, resume_step, config, fingerprint, allow_change, reductions):
        """Restores the run (if resuming), writes config.json, opens the log."""
        run, meta = self.run_dir, None
        self.config = json.loads(dumps(dict(config or {})))
        self.config.update(
            epochs=self.epochs,
            steps_per_epoch=self.per_epoch,
            total_steps=self.per_epoch and self.epochs * self.per_epoch,
            out_dir=None if run is None else str(run.path),
            jax_version=jax.__version__,
        )
        if fingerprint is not None:
            self.config["data"] = dict(fingerprint)
        if run is not None and (run.resume or resume_step is not None):
            state, meta = run.restore(state, resume_step)
            stored = meta.get("config", {}).get("data")
            check_data(stored, self.config.get("data"), allow_change, self.note)
            planned = meta.get("config", {}).get("total_steps")
            if planned not in (None, self.config["total_steps"]):
                self.note(
                    f"note: the run changes from {planned} to "
                    f"{self.config['total_steps']} steps in all, and so does a "
                    "learning-rate schedule over the steps"
                )
            progress = meta["progress"]
            self.step = int(meta["step"])
            self.epoch, self.batch = int(progress["epoch"]), int(progress["batch"])
            self.examples = int(progress["examples"])
            times = decode_floats(progress["times"])
            self.times = {k: float(times.get(k, 0.0)) for k in _TIMES}
            self.checkpoint = run.checkpoints.path_for(self.step)
        if run is not None:
            run.write_config(self.config)
        self.metrics = StepMetrics(reductions, meta and meta["progress"]["metrics"])
        self.log = MetricsLog(
            None if run is None else run.metrics_path,
            None if meta is None else self.step,
        )
        self.saved_step = self.step if meta else None
        return state

    def train(self, train_step, state, progress: bool):
        """Runs the epochs; returns `(state, FitSummary)`."""
        total = None if self.per_epoch is None else self.epochs * self.per_epoch
        if self.max_steps != math.inf:
            total = int(min(total or self.max_steps, self.max_steps))
        bar = ProgressBar(
            total, self.step, enabled=progress and jax.process_index() == 0
        )
        self.compiled = False
        halted = self.stop.should_stop(self.step)  # a signal while loading
        try:
            while not halted and self.epoch < self.epochs:
                if self.step >= self.max_steps:
                    break
                bar.epoch(self.epoch + 1, self.epochs)
                state, ended, halted = self._epoch(train_step, state, bar)
                if ended:
                    self._end_epoch(state)
        finally:
            bar.close()
        if self.run_dir is not None and self.saved_step != self.step:
            self._save(state)
        if halted:
            return state, self._stopped_by_signal()
        if self.batch:  # stopped mid-epoch by max_steps
            steps, train = self.metrics.epoch_so_far()
            self._check_skipped(steps, train, f"epoch {self.epoch + 1} so far")
        self._final_test(state)
        stopped = "completed" if self.epoch >= self.epochs else "max_steps"
        summary = self._summary(stopped, 0)
        if self.plot is not None:
            self.plot(None if self.run_dir is None else self.run_dir.path, state)
        return state, summary

    def _epoch(self, train_step, state, bar) -> tuple[Any, bool, bool]:
        """Trains on the rest of the current epoch, until its end, a signal or
        max_steps; returns `(state, whether the epoch ended, whether halted)`."""
        batches = iter(self.source(self.epoch))
        self._skip(batches)
        ended = halted = False
        t_mark = time.perf_counter()
        while not ended:
            batch = _END if self.batch == self.per_epoch else next(batches, _END)
            if batch is _END:
                ended = True
                break
            t0 = time.perf_counter()
            state, step_metrics = train_step(state, batch)
            self.metrics.add(step_metrics)
            self.step += 1
            self.batch += 1
            if not self.compiled:  # the first call compiles: timed apart
                jax.block_until_ready(step_metrics)
                self.times["compile"] += self._elapsed(t0)
                self.compiled, t_mark = True, time.perf_counter()
                self.rate_mark = (t_mark, self.examples)
            else:
                self.examples += _examples(batch)
            due = self.step % self.log_every == 0 or self.batch == self.per_epoch
            bar.step(self._line() if due else None)
            halted = self.stop.should_stop(self.step)
            if halted or self.step >= self.max_steps:
                if self.per_epoch is None:  # peek: did the epoch end just now?
                    ended = next(batches, _END) is _END
                ended = ended or self.batch == self.per_epoch
                break
        jax.block_until_ready(state)  # the steps' time is train time
        self.times["train"] += self._elapsed(t_mark)
        return state, ended, halted

    # ---------------------------------------------------------- the pieces

    def _skip(self, batches) -> None:
        """Drops the batches of the epoch that the checkpoint already took."""
        skipped = sum(1 for _ in itertools.islice(batches, self.batch))
        if skipped < self.batch:
            raise ResumeError(
                f"train_batches({self.epoch}) gave {skipped} batches, fewer than "
                f"the {self.batch} the checkpoint had taken of that epoch; the "
                "data or batch size changed since the run started"
            )

    def _line(self) -> dict | None:
        steps, values = self.metrics.line()
        if not steps:
            return None
        now = time.perf_counter()
        seconds = max(now - self.rate_mark[0], 1e-9)
        rate = round((self.examples - self.rate_mark[1]) / seconds, 1)
        self.rate_mark = (now, self.examples)
        return self.log.write(
            {
                "type": "step",
                "step": self.step,
                "epoch": self.epoch + 1,
                **values,
                "seconds": round(self._wall(), 3),
                "images_per_sec": rate,
            }
        )

    def _end_epoch(self, state) -> None:
        if self.batch == 0:
            raise ValueError(
                f"fit: expected batches from train_batches({self.epoch}), got none."
            )
        self._line()
        steps, train = self.metrics.epoch()
        self._evaluate(state)
        self.log.write(
            {
                "type": "epoch",
                "step": self.step,
                "epoch": self.epoch + 1,
                **train,
                **{f"test_{k}": v for k, v in self.test.items()},
                "seconds": round(self._wall(), 3),
                "images_per_sec": round(
                    self.examples / max(self.times["train"], 1e-9), 1
                ),
            }
        )
        self._check_skipped(steps, train, f"epoch {self.epoch + 1}")
        self.epoch, self.batch = self.epoch + 1, 0
        if self.run_dir is not None:
            self._save(state)
        self.rate_mark = (time.perf_counter(), self.examples)

    def _evaluate(self, state) -> None:
        eval_step, data, batch_size = self.eval
        if eval_step is None:
            return
        jax.block_until_ready(state)  # the train steps' time is not eval time
        t0 = time.perf_counter()
        self.test = evaluate(eval_step, state, data[0], data[1], batch_size)
        self.test_step = self.step
        self.times["eval"] += self._elapsed(t0)

    def _final_test(self, state) -> None:
        last = self.log.last
        if self.test_step == self.step:
            return
        if last.get("type") == "epoch" and last["step"] == self.step:
            self.test = split_record(last)[1]  # a resumed run that had finished
            self.test_step = self.step
        else:
            self._evaluate(state)

    def _check_skipped(self, steps: int, train: dict, where: str) -> None:
        skipped = train.get("nonfinite")
        if not steps or not isinstance(skipped, (int, float)) or not skipped:
            return
        if skipped >= steps:
            raise NonFiniteError(
                f"every step of {where} ({steps}) was skipped as non-finite (a NaN "
                "or infinite loss, gradient or update), so the run learnt nothing. "
                "Check the data for NaN/inf values and lower the learning rate"
            )
        self.note(
            f"warning: {skipped:g} of {steps} steps of {where} were skipped as "
            "non-finite (a NaN or infinite loss, gradient or update)"
        )

    def _save(self, state) -> None:
        """Checkpoints `state`; called only when there is a run directory."""
        run_dir = cast(RunDir, self.run_dir)
        t0 = time.perf_counter()
        meta = {
            "step": self.step,
            "epoch": self.epoch,
            "config": self.config,
            "progress": {
                "epoch": self.epoch,
                "batch": self.batch,
                "metrics": self.metrics.state(),
                "examples": self.examples,
                "times": encode_floats(dict(self.times, wall=self._wall())),
            },
        }
        self.checkpoint = run_dir.save(self.step, state, meta)
        self.saved_step = self.step
        self.times["save"] += self._elapsed(t0)

    def _stopped_by_signal(self) -> FitSummary:
        where = (
            f"stopped by {self.stop.name} at step {self.step} ({self.epoch} of "
            f"{self.epochs} epochs complete)"
        )
        self.note(f"{where}; saved {self.checkpoint}" if self.checkpoint else where)
        return self._summary(self.stop.name or "signal", self.stop.exit_code)

    def _summary(self, stopped: str, exit_code: int) -> FitSummary:
        train, _ = split_record(self.log.last)
        return FitSummary(
            steps=self.step,
            epochs=self.epoch,
            train=train,
            test=dict(self.test) if self.test_step == self.step else {},
            train_seconds=self.times["train"],
            compile_seconds=self.times["compile"],
            eval_seconds=self.times["eval"],
            save_seconds=self.times["save"],
            wall_seconds=self._wall(),
            examples_per_sec=self.examples / max(self.times["train"], 1e-9),
            checkpoint=self.checkpoint,
            out_dir=None if self.run_dir is None else self.run_dir.path,
            stopped=stopped,
            exit_code=exit_code,
        )


_END = object()  # next(iterator, _END) at its end


def _examples(batch) -> int:
    leaves = jax.tree_util.tree_leaves(batch)
    shape = getattr(leaves[0], "shape", ()) if leaves else ()
    return int(shape[0]) if shape else 1

"""What `fit` returns besides the state: a small summary of the run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

TIMING = ("seconds", "images_per_sec")  # fields of a record that vary run to run
_NOT_METRICS = ("type", "step", "epoch", *TIMING)
_BOOKKEEPING = ("grad_norm", "lr", "nonfinite")  # metrics the table leaves out


def split_record(record: dict[str, Any]) -> tuple[dict, dict]:
    """(train metrics, test metrics without the "test_" prefix) of a record."""
    train = {
        k: v
        for k, v in record.items()
        if k not in _NOT_METRICS and not k.startswith("test_")
    }
    test = {k[5:]: v for k, v in record.items() if k.startswith("test_")}
    return train, test


@dataclasses.dataclass(frozen=True)
class FitSummary:
    """How a `fit` call ended.

    Times are summed over every call that trained the run (a resumed run adds
    to the times saved in its checkpoint).

    Attributes:
        steps: the step reached.
        epochs: the epochs completed.
        train: the last logged train metrics (of the last epoch, or of the last
            step line when the run stopped mid-epoch).
        test: the test metrics of the final state ({} without evaluation, or
            when a signal stopped the run).
        train_seconds: time in train steps: excludes each call's first step
            (which compiles), evaluation and checkpoint saves.
        compile_seconds: the first step of each call (tracing, compiling and
            running it).
        eval_seconds: per-epoch and final evaluation, their compiles included.
        save_seconds: writing checkpoints.
        wall_seconds: the whole loop: all of the above, logging and restoring
            (not the plot hook).
        examples_per_sec: training examples per second of `train_seconds`.
        checkpoint: the last checkpoint written or restored, None without a run
            directory.
        out_dir: the run directory, or None.
        stopped: "completed", "max_steps", "SIGINT" or "SIGTERM".
        exit_code: 0, or 128 + the signal (130 for SIGINT, 143 for SIGTERM).
    """

    steps: int
    epochs: int
    train: dict
    test: dict
    train_seconds: float
    compile_seconds: float
    eval_seconds: float
    save_seconds: float
    wall_seconds: float
    examples_per_sec: float
    checkpoint: Path | None
    out_dir: Path | None
    stopped: str
    exit_code: int

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (label, value) rows."""

        def number(d, key, fmt):
            value = d.get(key)
            return "n/a" if not isinstance(value, (int, float)) else fmt(value)

        rows = [
            ("run dir", str(self.out_dir)),
            ("steps", f"{self.steps} ({self.epochs} epochs complete)"),
            ("stopped", self.stopped),
        ]
        for name in sorted(self.train, key=lambda k: k != "loss"):  # loss first
            if name not in _BOOKKEEPING:
                fmt = _percent if name == "accuracy" else (lambda v: f"{v:.4f}")
                rows.append((f"train {name}", number(self.train, name, fmt)))
        if self.train.get("nonfinite"):
            rows.append(("skipped steps", f"{self.train['nonfinite']} (last epoch)"))
        if self.test:
            accuracy = number(self.test, "accuracy", _percent)
            if "correct" in self.test and "count" in self.test:
                accuracy += f" ({self.test['correct']}/{self.test['count']})"
            rows.append(("test loss", number(self.test, "loss", lambda v: f"{v:.4f}")))
            rows.append(("test accuracy", accuracy))
        rows += [
            (
                "train time",
                f"{self.train_seconds:.1f} s (train steps only; not included: "
                f"compile {self.compile_seconds:.1f} s, eval {self.eval_seconds:.1f}"
                f" s, checkpoints {self.save_seconds:.1f} s; wall "
                f"{self.wall_seconds:.1f} s)",
            ),
            ("images/s", f"{self.examples_per_sec:.0f} (train steps)"),
            ("checkpoint", str(self.checkpoint)),
        ]
        return rows

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"

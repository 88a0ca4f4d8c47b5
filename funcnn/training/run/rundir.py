"""The run directory: config.json, metrics.jsonl and checkpoints/, held by one run.

    runs/20250101-120000/
        config.json        the run's settings and its data's fingerprint
        metrics.jsonl      one line per logged step and per epoch
        checkpoints/       ckpt_{step:08d}.safetensors: state + the loop's progress

A `RunDir` is held with an exclusive lock while open, so a second run cannot
write into it at the same time. A directory whose run stopped before its first
checkpoint has nothing to resume and simply starts again. With several
processes, process 0 owns the directory and process p keeps its own copy in the
subdirectory `process{p}`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcnn.training.run.errors import DataChangedError, ResumeError, RunDirError
from funcnn.training.run.metrics import dumps

LOCK = ".lock"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
_MESSAGE_CHARS = 300  # of an error quoted inside a one-line message


def note_to_stderr(message: str) -> None:
    print(f"fit: {message}", file=sys.stderr)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."


def new_run_dir(root: str | os.PathLike = "runs") -> Path:
    """Creates `root/<YYYYmmdd-HHMMSS>` (or `...-1`, `-2`, ... when taken), never
    a directory another run created, even one started in the same second."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create the runs directory {root}: {err}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in itertools.count():
        path = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir()  # atomic: exactly one caller creates it
        except FileExistsError:
            continue
        except OSError as err:
            raise RunDirError(
                f"cannot create the run directory {path}: {err}"
            ) from None
        return path
    raise AssertionError("unreachable")


def data_fingerprint(*arrays) -> dict[str, Any]:
    """A cheap identity of a data set: its example count and a hash of its arrays.

    Args:
        arrays: e.g. `(x_train, y_train)`, each of shape `(N, ...)`.

    Returns:
        `{"examples": N, "sha256": hex}`, the hash over each array's dtype,
        shape and bytes.
    """
    if not arrays:
        raise ValueError("data_fingerprint: expected at least one array, got none.")
    sha = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(np.asarray(arr))
        sha.update(f"{arr.dtype.str}{arr.shape}".encode())
        sha.update(arr.reshape(-1).view(np.uint8).data)
    return {"examples": int(np.shape(arrays[0])[0]), "sha256": sha.hexdigest()}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config.json of the run directory `path`, as a dict.

    Raises:
        RunDirError: if the file is missing, empty, not JSON or not an object.
    """
    path = Path(path) / CONFIG
    if not path.is_file():
        raise RunDirError(
            f"no run to continue: {path} does not exist; start the run first "
            "(without --resume)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunDirError(
            f"{path} is not a readable JSON file ({_one_line(err)}); restore it, "
            "or start a new run in another directory"
        ) from None
    if not isinstance(config, dict):
        raise RunDirError(
            f"{path}: expected a JSON object of settings, got "
            f"{type(config).__name__}; restore it, or start a new run elsewhere"
        )
    return config


def check_data(
    stored: dict | None, current: dict | None, allow_change: bool, note: Callable
) -> None:
    """Refuses (or, with `allow_change`, notes) data other than the run's own."""
    if stored is None or current is None or stored == current:
        return
    what = (
        f"the training data changed since the run started ({stored['examples']} "
        f"examples, sha256 {stored['sha256'][:12]}...; now {current['examples']}, "
        f"{current['sha256'][:12]}...)"
    )
    if not allow_change:
        raise DataChangedError(
            f"{what}. Resume with the same data, or allow it explicitly "
            "(allow_data_change=True, --allow-data-change)"
        )
    note(f"warning: {what}; going on as asked")


class RunDir:
    """A run directory, locked for this run while open.

    Args:
        path: the run directory, created if missing. With several processes the
            directory of process p > 0 is `path / f"process{p}"`.
        resume: continue the run saved there. Without a checkpoint there is
            nothing to continue, and the run starts from step 0.
        keep: how many checkpoints to keep.
        note: prints one-line notes (default: to stderr).

    Raises:
        RunDirError: if the directory cannot be created or written, another run
            holds it, or it holds checkpoints and `resume` is False.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume: bool = False,
        keep: int | None = 3,
        note: Callable[[str], None] = note_to_stderr,
    ):
        # Lazy: safetensors loads only when a run saves checkpoints.
        from funcnn.training.checkpoint import CheckpointManager

        self.root = Path(path)
        index = jax.process_index()
        self.path = self.root / f"process{index}" if index else self.root
        self.note = note
        self._lock = self._acquire()
        try:
            self.checkpoints = CheckpointManager(self.path / "checkpoints", keep=keep)
        except OSError as err:
            self.close()
            raise RunDirError(f"cannot use {self.path}: {_one_line(err)}") from None
        saved = self.checkpoints.steps()
        if saved and not resume:
            self.close()
            raise RunDirError(
                f"{self.root} already holds a run (checkpoints up to step "
                f"{saved[-1]}); resume it (--resume) or choose another directory"
            )
        if not saved and (self.path / CONFIG).exists():
            note(
                f"{self.path} holds no checkpoint (its run stopped before the "
                "first one); starting again from step 0"
            )
        self.resume = bool(resume and saved)

    def _acquire(self):
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / LOCK, "a")  # noqa: SIM115 - held while open
        except OSError as err:
            raise RunDirError(
                f"cannot use {self.path} as the run directory: {_one_line(err)}"
            ) from None
        try:
            import fcntl  # POSIX only, hence here
        except ImportError:  # not POSIX: no lock, the rest works
            return lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise RunDirError(
                f"another run is using {self.path}; wait for it or choose another "
                "directory"
            ) from None
        return lock

    def close(self) -> None:
        """Releases the lock (closing the file releases it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / CONFIG).write_text(dumps(config, indent=2) + "\n")

    def save(self, step: int, state: Any, metadata: dict[str, Any]) -> Path:
        """Saves `state` and `metadata` (JSON-able) as the checkpoint of `step`."""
        return self.checkpoints.save(step, state, metadata)

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Loads the checkpoint of `step`, or the newest intact one.

        Without `step`, a checkpoint that cannot be read is renamed to
        `<name>.corrupt` with a one-line note, and the next older one is tried.
        With `step`, the checkpoints after it are renamed `<name>.superseded`
        (the run continues from `step` and will write its own).

        Returns:
            `(state, metadata)`.

        Raises:
            ResumeError: if `step` has no checkpoint or no checkpoint is intact.
        """
        self.checkpoints.remove_temp_files()
        saved = self.checkpoints.steps()
        if step is not None:
            if step not in saved:
                raise ResumeError(
                    f"no checkpoint of step {step} in {self.checkpoints.directory}; "
                    f"saved steps: {saved}"
                )
            try:
                tree, meta = self.checkpoints.restore(like, step)
            except (ValueError, KeyError, TypeError) as err:
                raise ResumeError(
                    f"the checkpoint of step {step} cannot be loaded: {_one_line(err)}"
                ) from None
            later = [s for s in saved if s > step]
            self._set_aside(later, "superseded")
            if later:
                self.note(
                    f"resuming from step {step}; the later checkpoints {later} are "
                    "renamed *.superseded"
                )
            return tree, meta
        errors = []
        for candidate in reversed(saved):
            try:
                tree, meta = self.checkpoints.restore(like, candidate)
            except (ValueError, KeyError, TypeError) as err:
                errors.append(f"step {candidate}: {_one_line(err)}")
                continue
            if errors:
                bad = [s for s in saved if s > candidate]
                self._set_aside(bad, "corrupt")
                self.note(
                    f"the checkpoint(s) of step {bad} cannot be loaded ({errors[0]}); "
                    f"resuming from step {candidate}, the newest intact one (the "
                    "others are renamed *.corrupt)"
                )
            return tree, meta
        raise ResumeError(
            f"no checkpoint in {self.checkpoints.directory} can be loaded: "
            + "; ".join(errors[:3])
        )

    def _set_aside(self, steps: list[int], suffix: str) -> None:
        for s in steps:
            path = self.checkpoints.path_for(s)
            with contextlib.suppress(FileNotFoundError):
                path.rename(path.with_name(f"{path.name}.{suffix}"))

"""Checkpoints: save and load a pytree of arrays, and keep the last few of a run.

`save_checkpoint` and `load_checkpoint` read and write one file; the format
(safetensors with a manifest, a SHA-256 over the manifest and the tensors, and
atomic writes) is described in `funcnn.training.checkpoint_format`.
`CheckpointManager` keeps the checkpoints of a run in one directory.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
from pathlib import Path
from typing import Any

from funcnn.training.checkpoint_format import load_checkpoint as load_checkpoint
from funcnn.training.checkpoint_format import save_checkpoint as save_checkpoint

__all__ = ["CheckpointManager", "load_checkpoint", "save_checkpoint"]


class CheckpointManager:
    """Keeps the last few checkpoints of a run in one directory.

    Files are named `ckpt_{step:08d}.safetensors`; temporary files start with
    a dot and never match, so a writer killed mid-save leaves at most a stray
    temporary file and every listed checkpoint is complete.

    Args:
        directory: the run's checkpoint directory, created if missing.
        keep: how many checkpoints to keep (>= 1), or None to keep all.
    """

    _NAME = re.compile(r"ckpt_(\d{8,})\.safetensors")
    _TEMP = re.compile(r"\.ckpt_\d{8,}\.safetensors\.[0-9a-f]+\.tmp")

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3):
        if keep is not None and (isinstance(keep, bool) or operator.index(keep) < 1):
            raise ValueError(
                f"CheckpointManager: expected keep >= 1 or None, got {keep!r}. "
                "Use keep=None to keep every checkpoint."
            )
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, step: int) -> Path:
        """The file that holds `step`."""
        return self.directory / f"ckpt_{step:08d}.safetensors"

    def steps(self) -> list[int]:
        """The steps with a checkpoint on disk, ascending."""
        found = []
        for entry in os.scandir(self.directory):
            match = self._NAME.fullmatch(entry.name)
            if match and entry.is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def remove_temp_files(self) -> int:
        """Deletes temporary files left by writers that were killed mid-save.

        Call this only while no other process saves into the directory, or it
        may delete a file that process is still writing.

        Returns:
            The number of files deleted.
        """
        removed = 0
        for entry in os.scandir(self.directory):
            if self._TEMP.fullmatch(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def latest_step(self) -> int | None:
        """The largest saved step, or None if there is no checkpoint."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, tree: Any, metadata: dict | None = None) -> Path:
        """Saves `tree` for `step`, then prunes old checkpoints.

        The new file is kept in any case; among the others, those with the
        largest steps are kept, `keep` files in all. Pruning starts only after
        the new file is durably in place.

        Args:
            step: a non-negative int.
            tree: the pytree to save; see `save_checkpoint`.
            metadata: a JSON-serialisable dict; see `save_checkpoint`.

        Returns:
            The path of the new checkpoint.
        """
        if isinstance(step, bool) or operator.index(step) < 0:
            raise ValueError(
                f"CheckpointManager.save: expected a non-negative int step, got "
                f"{step!r}."
            )
        step = operator.index(step)
        path = self.path_for(step)
        save_checkpoint(path, tree, metadata)
        if self.keep is not None:
            others = [s for s in self.steps() if s != step]
            for old in others[: max(0, len(others) - (self.keep - 1))]:
                with contextlib.suppress(FileNotFoundError):
                    self.path_for(old).unlink()
        return path

    def restore(self, like: Any = None, step: int | None = None) -> tuple[Any, dict]:
        """Loads the checkpoint of `step`, or of the latest step if None.

        Args:
            like: a template pytree, or None for a flat dict; see
                `load_checkpoint`.
            step: the step to load; None loads the latest.

        Returns:
            `(tree, metadata)` as from `load_checkpoint`.

        Raises:
            FileNotFoundError: if there is no checkpoint (for `step`).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(
                    f"CheckpointManager.restore: expected a checkpoint in "
                    f"{self.directory}, got none. Train and save first."
                )
        path = self.path_for(step)
        if not path.is_file():
            raise FileNotFoundError(
                f"CheckpointManager.restore: expected a checkpoint for step {step} "
                f"at {path}, got none. Saved steps: {self.steps()}."
            )
        return load_checkpoint(path, like)

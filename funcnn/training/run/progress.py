"""A progress bar over steps (tqdm, on stderr), silent when disabled."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any


class ProgressBar:
    """Steps done of `total`, the epoch and the last logged loss and rate.

    Args:
        total: the number of steps the run will reach, or None if unknown.
        initial: the step the run starts from (a resumed run starts later).
        enabled: False draws nothing (and does not import tqdm).
    """

    def __init__(self, total: int | None, initial: int = 0, *, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm  # lazy: loads only when a bar is shown

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def epoch(self, epoch: int, epochs: int) -> None:
        """Shows the 1-based `epoch` of `epochs`."""
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{epochs}")

    def step(self, record: Mapping[str, Any] | None = None) -> None:
        """Advances one step; with a logged `record`, shows its loss and rate."""
        if self.bar is None:
            return
        self.bar.update(1)
        if record is not None:
            shown = {}
            if isinstance(record.get("loss"), float):
                shown["loss"] = f"{record['loss']:.4f}"
            if isinstance(record.get("images_per_sec"), float):
                shown["img_s"] = f"{record['images_per_sec']:.0f}"
            self.bar.set_postfix(shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

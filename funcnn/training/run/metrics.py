"""metrics.jsonl: one strict-JSON line per logged step and per epoch.

A train step returns a dict of scalar metrics, whatever their names. They stay on
the device until a log point, then `StepMetrics` aggregates them on the host:

- "mean" (the default): the mean of the finite values, `None` when none is;
- "sum": e.g. "nonfinite", the number of steps skipped as non-finite;
- "last": e.g. "lr", the rate of the last step.

Lines are strict JSON (`allow_nan=False`): a NaN or infinite number is written as
`null`. The running sums are part of a checkpoint (`StepMetrics.state`), so a run
resumed from it logs the same lines as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import jax
import numpy as np

DEFAULT_REDUCTIONS = {"nonfinite": "sum", "lr": "last"}
REDUCTIONS = ("mean", "sum", "last")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _jsonable(value: Any) -> Any:
    """`value` with numpy scalars and arrays as Python values and every
    non-finite float as None, so strict JSON can always encode it."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # Paths and other objects: their text


def dumps(record: Any, **kwargs) -> str:
    """Strict JSON text of `record`: non-finite floats become null, numpy values
    Python ones, anything else its str(). Never fails on a NaN."""
    return json.dumps(_jsonable(record), allow_nan=False, **kwargs)


def encode_floats(value: Any) -> Any:
    """`value` with non-finite floats as the strings "nan", "inf", "-inf", for
    checkpoint metadata that must round-trip exactly (see `decode_floats`)."""
    if isinstance(value, dict):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_floats(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def decode_floats(value: Any) -> Any:
    """Inverse of `encode_floats`."""
    if isinstance(value, dict):
        return {k: decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_floats(v) for v in value]
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


class Aggregate:
    """Running sums of the metrics of a stretch of steps.

    Attributes:
        steps: the number of steps added.
        sums: per metric, the sum of its finite values (in the order added).
        counts: per metric, how many of its values were finite.
        last: per metric, its last value (finite or not).
    """

    def __init__(self, state: Mapping | None = None):
        state = cast(dict, decode_floats(dict(state or {})))
        self.steps: int = int(state.get("steps", 0))
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.counts: dict[str, int] = dict(state.get("counts", {}))
        self.last: dict[str, float] = dict(state.get("last", {}))

    def add(self, values: Mapping[str, float]) -> None:
        self.steps += 1
        for name, value in values.items():
            self.last[name] = value
            self.sums.setdefault(name, 0.0)
            self.counts.setdefault(name, 0)
            if math.isfinite(value):
                self.sums[name] += value
                self.counts[name] += 1

    def reduce(self, reductions: Mapping[str, str]) -> dict[str, float | int | None]:
        """One value per metric; see the module docstring."""
        out: dict[str, float | int | None] = {}
        for name in self.last:
            how = reductions.get(name, "mean")
            if how == "last":
                out[name] = self.last[name]
            elif how == "sum":
                total = self.sums[name]
                out[name] = int(total) if float(total).is_integer() else total
            else:
                count = self.counts[name]
                out[name] = self.sums[name] / count if count else None
        return out

    def state(self) -> dict:
        """JSON-able state (non-finite numbers encoded), for a checkpoint."""
        return encode_floats(
            {
                "steps": self.steps,
                "sums": self.sums,
                "counts": self.counts,
                "last": self.last,
            }
        )


def host_values(metrics: list[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Device metric dicts -> dicts of Python floats, in one transfer.

    Only scalar metrics are kept; arrays of another shape are left out.
    """
    host = jax.device_get(list(metrics))
    return [
        {k: float(v) for k, v in m.items() if np.ndim(v) == 0 and _is_number(v)}
        for m in host
    ]


def _is_number(value: Any) -> bool:
    return np.issubdtype(np.asarray(value).dtype, np.number) or isinstance(
        value, (bool, np.bool_)
    )


class StepMetrics:
    """The metrics of the steps since the last step line and of the current epoch.

    `add(metrics)` keeps a step's device metrics without waiting for them;
    `line()` and `epoch()` fetch what is pending and return the aggregate of the
    stretch, starting a new one.

    Args:
        reductions: metric name -> "mean", "sum" or "last", over
            `DEFAULT_REDUCTIONS`; unlisted metrics are averaged.
        state: from `state()`, to continue where a checkpoint left off.
    """

    def __init__(self, reductions: Mapping[str, str] | None = None, state=None):
        self.reductions = {**DEFAULT_REDUCTIONS, **(reductions or {})}
        bad = {k: v for k, v in self.reductions.items() if v not in REDUCTIONS}
        if bad:
            raise ValueError(
                f"fit: expected reductions in {REDUCTIONS}, got {bad}. Use e.g. "
                '{"my_count": "sum"}.'
            )
        state = state or {}
        self.pending: list = []
        self.current_line = Aggregate(state.get("line"))
        self.current_epoch = Aggregate(state.get("epoch"))

    def add(self, metrics: Mapping[str, Any]) -> None:
        self.pending.append(metrics)

    def sync(self) -> None:
        """Moves the pending device metrics to the host aggregates."""
        if self.pending:
            for values in host_values(self.pending):
                self.current_line.add(values)
                self.current_epoch.add(values)
            self.pending = []

    def line(self) -> tuple[int, dict]:
        """(steps, reduced metrics) since the last line; starts a new line."""
        self.sync()
        done, self.current_line = self.current_line, Aggregate()
        return done.steps, done.reduce(self.reductions)

    def epoch(self) -> tuple[int, dict]:
        """(steps, reduced metrics) of the epoch; starts a new epoch."""
        self.sync()
        done, self.current_epoch = self.current_epoch, Aggregate()
        return done.steps, done.reduce(self.reductions)

    def epoch_so_far(self) -> tuple[int, dict]:
        """(steps, reduced metrics) of the current epoch, which goes on."""
        self.sync()
        return self.current_epoch.steps, self.current_epoch.reduce(self.reductions)

    def state(self) -> dict:
        self.sync()
        return {"line": self.current_line.state(), "epoch": self.current_epoch.state()}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (or of a run directory's), skipping a
    torn or blank line."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """Appends records to a JSON-lines file.

    Args:
        path: the metrics.jsonl file, or None to keep only the last record.
        resume_step: None starts the file afresh; an int keeps the records up to
            that step (a run that died after its checkpoint logged more) and
            drops a torn last line.
    """

    def __init__(self, path: str | os.PathLike | None, resume_step: int | None = None):
        self.path = None if path is None else Path(path)
        self.last: dict = {}
        if self.path is None:
            return
        kept: list[str] = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(step, int) and step <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))
        self.last: dict = json.loads(kept[-1]) if kept else {}

    def write(self, record: Mapping[str, Any]) -> dict:
        """Appends `record` as one strict-JSON line; returns it as written."""
        text = dumps(record)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(text + "\n")
        self.last = json.loads(text)
        return self.last

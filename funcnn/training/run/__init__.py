"""The run loop: `fit` and the pieces it is built from, each usable on its own.

- `fit` (`funcnn.fit`): train for some epochs with evaluation, checkpoints,
  bit-identical resume, signal-safe stopping and a metrics log.
- `RunDir`, `new_run_dir`, `read_config`, `data_fingerprint`: the run directory.
- `MetricsLog`, `StepMetrics`, `read_metrics`: metrics.jsonl in strict JSON.
- `SignalStop`: SIGINT/SIGTERM stop after the current step, in every process.
- `ProgressBar`; `FitSummary`; the errors
  (`RunError` and its subclasses).
- `funcnn.training.run.cli`: the run flags for scripts built on `fit`.
"""

from funcnn.training.run.errors import DataChangedError as DataChangedError
from funcnn.training.run.errors import NonFiniteError as NonFiniteError
from funcnn.training.run.errors import ResumeError as ResumeError
from funcnn.training.run.errors import RunDirError as RunDirError
from funcnn.training.run.errors import RunError as RunError
from funcnn.training.run.fit import fit as fit
from funcnn.training.run.metrics import MetricsLog as MetricsLog
from funcnn.training.run.metrics import StepMetrics as StepMetrics
from funcnn.training.run.metrics import read_metrics as read_metrics
from funcnn.training.run.progress import ProgressBar as ProgressBar
from funcnn.training.run.rundir import RunDir as RunDir
from funcnn.training.run.rundir import data_fingerprint as data_fingerprint
from funcnn.training.run.rundir import new_run_dir as new_run_dir
from funcnn.training.run.rundir import read_config as read_config
from funcnn.training.run.stopping import SignalStop as SignalStop
from funcnn.training.run.summary import FitSummary as FitSummary


def __getattr__(name: str):
    # run_plots left with the pictures when imports were made one-way; asking
    # for it here says where it went.
    if name == "run_plots":
        raise AttributeError(
            "funcnn.training.run.run_plots moved to funcnn.inspect.plots.run_plots: "
            "the run loop takes it as fit(plot=...), and training imports nothing "
            "of funcnn.inspect (docs/guides/architecture.md)."
        )
    raise AttributeError(f"module 'funcnn.training.run' has no attribute {name!r}")

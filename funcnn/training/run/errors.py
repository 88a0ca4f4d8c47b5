"""The errors a run reports in one line, each with the exit code a CLI gives it."""

from __future__ import annotations


class RunError(Exception):
    """A run could not start or go on; the message says why and what to do.

    A command line prints the message as one line and exits with `exit_code`.
    """

    exit_code = 2


class RunDirError(RunError, ValueError):
    """The run directory cannot be used: not creatable, not writable, in use by
    another run, or holding a run that was not asked to resume."""


class ResumeError(RunError, ValueError):
    """No checkpoint of the run can be restored, or the chosen step is absent."""


class DataChangedError(RunError, ValueError):
    """The training data differs from the data the run was started on."""


class NonFiniteError(RunError, RuntimeError):
    """Every step of an epoch was skipped as non-finite: the run learns nothing."""

    exit_code = 3

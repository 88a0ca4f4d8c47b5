"""Signal-safe stopping: SIGINT or SIGTERM ends a loop after the current step.

`SignalStop` takes SIGINT (Ctrl-C) and SIGTERM while installed. The first signal
only sets a flag: the loop asks `should_stop(step)` after each step, saves a
checkpoint and exits with `exit_code` (128 + the signal: 130 or 143). A second
signal acts at once: Ctrl-C raises KeyboardInterrupt, SIGTERM terminates.

With several processes a local flag alone must not stop one process, or the
others would wait for it in the next all-reduce. `should_stop(step)` then asks
JAX's preemption sync point, which `jax.distributed` starts: it owns SIGTERM and
answers True at the same step in every process once any of them got one. A
signal our own handler took (SIGINT, or SIGTERM before `jax.distributed`
started) is passed on as SIGTERM to join it. Without the preemption service
(`JAX_ENABLE_PREEMPTION_SERVICE=false`) the processes agree by an all-gather of
their flags at every step instead.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable

import jax


class SignalStop:
    """Turns SIGINT/SIGTERM into a stop after the current step.

    Install it early (before loading data and compiling), so a signal during
    those also ends in a checkpoint: `with SignalStop() as stop: ...`, or
    `install()` and `uninstall()`. `funcnn.fit` installs its own when not given
    one.

    Args:
        signals: the signals to take; `()` leaves the handlers alone (then only
            `request()` stops the loop).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.signum: int | None = None  # the first signal taken
        self._old: dict = {}
        self._forwarded = False
        self._agreed = False

    def install(self) -> SignalStop:
        """Installs the handlers (in the main thread only; elsewhere Python does
        not deliver signals to handlers, and this is a no-op)."""
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._old[signum] = signal.signal(signum, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Restores the handlers found by `install`."""
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}

    def __enter__(self) -> SignalStop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _on_signal(self, signum, frame) -> None:
        del frame
        self.request(signum)
        # A second signal acts at once: Ctrl-C raises, SIGTERM terminates.
        if signum == signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)
        else:
            signal.signal(signum, signal.SIG_DFL)

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Asks for a stop as if `signum` had arrived (the first request wins)."""
        if self.signum is None:
            self.signum = signum

    @property
    def name(self) -> str | None:
        """ "SIGINT" or "SIGTERM" once stopped, else None."""
        return None if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal number once stopped (130, 143), else 0."""
        return 0 if self.signum is None else 128 + self.signum

    def should_stop(self, step: int) -> bool:
        """Whether the loop stops after `step`; the same answer in every process.

        Call it once per step, at the same steps in every process (with several
        processes it is a collective).
        """
        if jax.process_count() == 1:
            return self.signum is not None
        # Lazy: the multi-process runtime loads only in a multi-process run.
        from jax.experimental import multihost_utils

        from funcnn.distributed.mesh import any_process

        try:
            agreed = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # preemption service off: agree by an all-gather
            agreed = any_process(self.signum is not None)
        else:
            if self.signum is not None and not self._forwarded:
                # The service owns SIGTERM and announces it to every process.
                self._forwarded = True
                os.kill(os.getpid(), signal.SIGTERM)
        if agreed:
            self.request(signal.SIGTERM)
            self._agreed = True
        return self._agreed

"""How one process of a job answers SIGINT and SIGTERM, in each phase of its life.

While it starts (imports, data, model, the RPC rendezvous) there is nothing to save: a stop
raises `StopRequested` at once, wherever the main thread is, and the process leaves with code 0.
Once training is under way a stop is graceful: the `stop` event is set, workers finish their step
and leave, the PS writes a final checkpoint. A watchdog then ends the process by itself
`grace_period` seconds after the request, so a stop completes even when whoever asked for it (a
monitor, `adt run --no-ui`) died meanwhile. No torch here: it is installed before torch loads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from .events import ExitCode


class StopRequested(BaseException):
    """A stop signal while the process was still starting (a BaseException, as KeyboardInterrupt
    is, so that no `except Exception` on the way swallows it)."""


class StopSignals:
    """SIGINT/SIGTERM handling for one process; `stop` is the graceful-stop event."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.stop = threading.Event()
        self.starting = True
        self._grace: float | None = None

    def install(self) -> StopSignals:
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)
        return self

    def running(self, grace_period: float) -> None:
        """From now on a stop is graceful, and the process is gone `grace_period` s after it."""
        self._grace = grace_period
        self.starting = False

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.stop.is_set():  # a second signal: the first one's work is under way
            return
        self.stop.set()
        if self.starting:
            raise StopRequested(signal.Signals(signum).name)
        watchdog = threading.Timer(self._grace or 0.0, self._expire)
        watchdog.daemon = True
        watchdog.start()

    def _expire(self) -> None:
        print(f"[adt {self.role} pid {os.getpid()}] still running {self._grace:g}s after the stop "
              "request (--grace-period); exiting now", flush=True)
        sys.stderr.flush()
        os._exit(ExitCode.FAILED)

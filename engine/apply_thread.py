"""The parameter server's one apply thread: every state change runs on it, in arrival order.

RPC threads never block on the optimizer, and the algorithm needs no locks. Callers get a torch
Future that the thread completes; over RPC that Future is returned by `@async_execution`
functions.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


class ApplyThread:
    def __init__(self, name: str = "ps-apply") -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._busy = 0.0  # seconds spent running tasks since the last `busy_seconds()`
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> torch.futures.Future:
        """Run fn on the thread; the Future gets its result, or its exception."""
        future: torch.futures.Future = torch.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:  # hand the error to the caller instead of killing the thread
                future.set_exception(exc)

        self._queue.put(run)
        return future

    def later(self, fn: Callable[[torch.futures.Future], None]) -> torch.futures.Future:
        """Run fn(future) on the thread; fn completes the Future itself, now or later (a barrier)."""
        future: torch.futures.Future = torch.futures.Future()

        def run() -> None:
            try:
                fn(future)
            except Exception as exc:  # the caller gets the error; the thread lives on
                if not future.done():
                    future.set_exception(exc)

        self._queue.put(run)
        return future

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the thread and wait for its result."""
        return self.submit(fn).wait()

    def busy_seconds(self) -> float:
        """Seconds the thread worked (applies, validation, checkpoints) since the last call:
        near the interval's length, pushes wait in the queue (and grow stale there)."""
        busy, self._busy = self._busy, 0.0
        return busy

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (task := self._queue.get()) is not None:
            start = time.perf_counter()
            task()
            self._busy += time.perf_counter() - start

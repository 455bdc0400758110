"""Who is in the job and who is alive, as the parameter server sees it.

The PS's algorithm asks this class who is active and tells it who joined, left or pushed; the
liveness check (`find_lost`) decides who is gone: a local process that died, or a worker silent
for longer than its bound. What to do about it (alerts, the barrier) stays with the PS.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from .config import Settings
from .events import AlertCode
from .protocol import worker_names


@dataclass
class WorkerState:
    pid: int
    host: str
    last_seen: float = field(default_factory=time.monotonic)  # its last request the PS handled
    pending: int = 0  # its requests that arrived and wait for the apply thread
    epoch_done: int = -1
    left: bool = False
    lost: bool = False
    on_gpu: bool = False  # it trains on a GPU and TensorPipe maps it to the PS's GPU
    pushed: bool = False  # at least one push arrived (the silence bound is shorter from then on)
    buffers: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return not (self.left or self.lost)


@dataclass
class Lost:
    """A worker `find_lost` counted out, and why."""

    worker: int
    code: str  # the alert code: worker_lost (its process died) or worker_silent
    message: str
    died: bool


class Membership:
    def __init__(self, config: Settings, num_workers: int) -> None:
        self.config, self.num_workers = config, num_workers
        self.workers: dict[int, WorkerState] = {}
        self.never_registered = ""  # "worker1 and worker2", once --join-timeout counted them out
        self.all_left = threading.Event()
        self._pending_lock = threading.Lock()
        self._host = socket.gethostname()

    def heard(self, worker: int) -> None:
        """A request arrived (RPC thread). While the PS owes a worker a reply, the worker is not
        silent, however long validation or a checkpoint keeps the apply thread busy."""
        with self._pending_lock:
            state = self.workers.get(worker)
            if state is not None:
                state.pending += 1

    def answered(self, state: WorkerState) -> None:
        """The apply thread handles a request of this worker: it was heard from now."""
        with self._pending_lock:
            state.pending = max(0, state.pending - 1)
        state.last_seen = time.monotonic()

    def active(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.active]

    def note_gone(self) -> None:
        """After a worker left or was lost. Only once every worker has registered: an early
        leaver must not end the run for the rest."""
        if len(self.workers) >= self.num_workers and not self.active():
            self.all_left.set()

    def count_out_unregistered(self) -> list[int]:
        """After --join-timeout: workers that never registered (their process died, or hangs,
        after RPC formed) count as lost, so that the run can end without them."""
        missing = [w for w in range(self.num_workers) if w not in self.workers]
        if missing:
            self.never_registered = worker_names(missing)
            for worker in missing:
                self.workers[worker] = WorkerState(pid=0, host="", lost=True)
        return missing

    def find_lost(self, epoch: int) -> list[Lost]:
        """Count out the workers that are gone: a process on this host that died, or a worker
        that sent nothing for longer than its bound while it owed the PS a request."""
        now = time.monotonic()
        lost = []
        for index, state in self.workers.items():
            if not state.active:
                continue
            waiting = state.epoch_done >= epoch  # at the barrier: the PS owes it the reply
            owed = state.pending > 0  # a request of its waits behind the apply thread
            if state.host == self._host and not _alive(state.pid):
                state.lost = True
                lost.append(Lost(index, AlertCode.WORKER_LOST, f"worker {index} (pid {state.pid}) died; the run "
                                 "goes on with the other workers", died=True))
            elif not waiting and not owed and now - state.last_seen > self.silence_limit(state):
                state.lost = True
                lost.append(Lost(index, AlertCode.WORKER_SILENT, f"worker {index} sent nothing for "
                                 f"{self.silence_limit(state):.0f}s; counted as lost", died=False))
        return lost

    def silence_limit(self, state: WorkerState) -> float:
        """How long a worker may send nothing. Its first step may take minutes (torch.compile,
        cudnn autotuning, a slow first shard): until its first push, the start-up bound holds."""
        if state.pushed:
            return self.config.worker_timeout
        return max(self.config.worker_timeout, self.config.join_timeout)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

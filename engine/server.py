"""The parameter server: holds the global model, routes each push to its update rule.

Every state change runs on one apply thread (engine/apply_thread.py), so the algorithm reads in
one place (`_apply_push`) and needs no locks. Who is in the job and alive is engine/membership.py's
business; how a push becomes an update is the rule's business (engine/rules.py); the LR comes from the
schedule (engine/schedule.py), a function of the samples applied so far; validation, checkpoints
and what a resume restores are the run's bookkeeping (engine/bookkeeping.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .apply_thread import ApplyThread
from .bookkeeping import Bookkeeping, Progress
from .config import RunConfig
from .data import DataSpec
from .events import AlertCode, EventWriter
from .flat import FlatModel
from .interval import Interval
from .membership import Membership, WorkerState
from .models import build_for
from .protocol import Reply
from .rules import make_rule
from .schedule import LRSchedule


class ParameterServer:
    def __init__(self, config: RunConfig, data: DataSpec, events: EventWriter, num_workers: int,
                 device: torch.device, checkpoint_dir: Path, meta: dict[str, Any],
                 resume: dict[str, Any] | None = None, single: bool = False) -> None:
        self.config, self.data, self.events = config, data, events
        self.num_workers, self.device = num_workers, device
        self.checkpoint_dir, self.meta = checkpoint_dir, meta
        self.num_classes = len(data.classes)
        torch.manual_seed(config.seed)  # --seed: the global model's initialisation (workers take its weights)
        self.flat = FlatModel(build_for(config, self.num_classes, data.image_size).to(device))
        self.model = self.flat.model
        # Each component gets the sections of the config it reads, not the whole config.
        self.rule = make_rule(config.section("optimization", "asynchrony"), self.flat.params, self.flat.grads,
                              self.model, single)
        self.schedule = LRSchedule(config.section("optimization"), data.train.num_samples)
        self.version, self.epoch, self.samples_seen = 0, 0, 0
        self.lr = self.schedule(0)
        self.members = Membership(config.section("health", "network"), num_workers)
        self.workers = self.members.workers
        self.records = Bookkeeping(config, data, events, self.flat, device, checkpoint_dir, meta,
                                   lambda: [w.buffers for w in self.workers.values() if w.buffers is not None])
        self.resume_note = ""
        if resume:
            self._load_state(resume)
        self.all_left = self.members.all_left
        self.dropped = 0
        self.failures: list[str] = []  # why workers that failed left (their own words)
        self.outcome: str | None = None  # set when the run should end: finished/stopped/diverged
        self.stop_requested = threading.Event()
        self._barrier: list[tuple[int, torch.futures.Future]] = []
        self._arrived: dict[int, float] = {}  # when each worker reached this epoch's barrier
        self._epoch_began: float | None = None  # the first join, then each barrier's release
        self._barrier_params = not single  # the single process trains the PS's own model
        self._interval = Interval()  # measured until the next ps_metrics
        self._thread = ApplyThread()

    def job(self) -> dict[str, Any]:
        """What a joining worker needs to build its model and read its shards (immutable)."""
        return {"config": self.config.to_dict(), "train_urls": self.data.train.urls,
                "train_manifest": self.data.train.manifest,
                "train_manifest_path": self.data.train.manifest_path, "num_workers": self.num_workers}

    # --- entry points (any thread); each returns a Future completed by the apply thread ------
    def register(self, worker: int, info: dict[str, Any]) -> torch.futures.Future:
        return self._submit(lambda: self._register(worker, info))

    def push(self, worker: int, base_version: int, grads: torch.Tensor, buffers: torch.Tensor | None,
             samples: int, metrics: dict[str, Any] | None, reply_params: bool = True) -> torch.futures.Future:
        self.members.heard(worker)
        if isinstance(grads, torch.Tensor) and grads.is_cuda and grads is not self.flat.grads:
            # RPC delivered the tensor on this thread's current stream; the apply thread uses
            # another, so wait here (on an RPC thread) until it has fully arrived.
            torch.cuda.current_stream(grads.device).synchronize()
        return self._submit(lambda: self._apply_push(worker, base_version, grads, buffers, samples,
                                                     metrics, reply_params))

    def refresh(self, worker: int) -> torch.futures.Future:
        """The current parameters for a worker about to take its first step."""
        self.members.heard(worker)

        def reply() -> Reply:
            self.members.answered(self.workers[worker])
            return self._reply(worker, True)

        return self._submit(reply)

    def pull(self) -> torch.futures.Future:
        """The plain transport's separate pull: every parameter as its own CPU tensor."""
        return self._submit(lambda: Reply(self.version, {n: p.detach().cpu().clone() for n, p in
                                                         self.flat.named_params.items()},
                                          self._stopping(), self.lr))

    def epoch_done(self, worker: int, epoch: int) -> torch.futures.Future:
        """Completed when every active worker finished the epoch (the barrier)."""
        self.members.heard(worker)
        return self._thread.later(lambda future: self._epoch_done(worker, epoch, future))

    def leave(self, worker: int, reason: str) -> torch.futures.Future:
        return self._submit(lambda: self._leave(worker, reason))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the apply thread and wait for its result (for the main thread's last steps)."""
        return self._thread.call(fn)

    def _submit(self, fn: Callable[[], Any]) -> torch.futures.Future:
        return self._thread.submit(fn)

    def close(self) -> None:
        self._thread.close()

    # --- the algorithm (apply thread only) ----------------------------------------------------
    def _register(self, worker: int, info: dict[str, Any]) -> dict[str, Any]:
        if info.get("data_problem"):  # its node's copy of the data differs: keep it out of the job
            self._alert("error", AlertCode.DATA_MISMATCH, f"worker {worker} (host {info.get('host')}) "
                        f"refused to train: {info['data_problem']}", worker=worker)
            self.workers[worker] = WorkerState(pid=info["pid"], host=info["host"], left=True)
            self._after_worker_gone()
            return {"version": self.version, "epoch": self.epoch, "params": None, "stop": True, "lr": self.lr}
        if self._epoch_began is None:
            self._epoch_began = time.monotonic()  # training starts with the first worker
        self.workers[worker] = WorkerState(pid=info["pid"], host=info["host"],
                                           on_gpu=self.device.type == "cuda" and
                                           str(info.get("device", "")).startswith("cuda"))
        self.events.emit("worker_join", worker=worker, **info)
        if info.get("code_fingerprint") != self.meta["code"]["fingerprint"]:
            self._alert("error", AlertCode.FINGERPRINT_MISMATCH,
                        f"worker {worker} runs code {info.get('code_fingerprint')} but the run started "
                        f"with {self.meta['code']['fingerprint']}: restart the job", worker=worker)
        params = self.rule.outgoing()
        self.rule.sent(worker, self.version, params)
        return {"version": self.version, "epoch": self.epoch, "params": params.cpu().clone(),
                "stop": self.outcome is not None, "lr": self.lr}

    def _apply_push(self, worker: int, base_version: int, grads: torch.Tensor, buffers: torch.Tensor,
                    samples: int, metrics: dict[str, Any] | None, reply_params: bool) -> Reply:
        start = time.perf_counter()
        state = self.workers[worker]
        self.members.answered(state)
        state.pushed = True
        if state.lost:
            state.lost = False
            self._alert("warning", AlertCode.WORKER_LOST, f"worker {worker} is back after being silent", worker)
        staleness = self.version - base_version
        applied = not (self.config.max_staleness and staleness > self.config.max_staleness)
        if not applied:
            self.dropped += 1  # too stale to help: count it and send fresh parameters
        else:
            if isinstance(grads, dict):  # the plain transport: one tensor per parameter
                for name, grad in grads.items():
                    self.flat.named_params[name].grad.copy_(grad)
            elif grads is not self.flat.grads:  # the single-process path shares its gradient buffer
                self.flat.grads.copy_(grads, non_blocking=True)
            self.lr = self.schedule(self._clock())
            self.rule.apply(worker, staleness, base_version, self.lr)
            self.version += 1
            if self.config.max_updates and self.version >= self.config.max_updates and self.outcome is None:
                self.outcome = "finished"  # a fixed budget of updates (benchmarks, smoke tests)
            self.samples_seen += samples
        if buffers is not None:
            state.buffers = buffers
        self._interval.push(staleness, 1000 * (time.perf_counter() - start), applied)
        if metrics is not None:
            self.events.emit("worker_metrics", worker=worker, staleness=staleness, **metrics)
            for alert in self.records.health.train_metrics(worker, float(metrics["loss"]), float(metrics["acc"])):
                self._alert(*alert, worker=worker)
                if self.config.stop_on_divergence:
                    self.outcome = "diverged"
        if applied and self.config.eval_every and self.version % self.config.eval_every == 0:
            self._validate()
        return self._reply(worker, reply_params)

    def _reply(self, worker: int, with_params: bool) -> Reply:
        """What the worker gets back: the version, and the parameters it should compute on next,
        on the PS's device (TensorPipe's device map takes them GPU to GPU) or the CPU."""
        params = None
        if with_params:
            dtype = torch.bfloat16 if self.config.transfer_dtype == "bf16" else torch.float32
            where = self.device if self.workers[worker].on_gpu else "cpu"
            outgoing = self.rule.outgoing()
            self.rule.sent(worker, self.version, outgoing)
            params = outgoing.to(where, dtype=dtype, copy=True)
            if params.is_cuda:  # RPC sends it from another thread: the copy must be done by then
                torch.cuda.current_stream(params.device).synchronize()
        return Reply(self.version, params, self._stopping(), self.lr, self.rule.step_size(self.lr))

    @property
    def progress(self) -> Progress:
        return Progress(self.version, self.epoch, self.samples_seen)

    @property
    def best_val_acc(self) -> float | None:
        return self.records.best_val_acc

    def _clock(self) -> float:
        """The schedule's clock: samples applied, in batches (engine/schedule.py)."""
        return self.samples_seen / self.config.batch_size

    def _stopping(self) -> bool:
        return self.outcome is not None or self.stop_requested.is_set()

    def _epoch_done(self, worker: int, epoch: int, future: torch.futures.Future) -> None:
        self.workers[worker].epoch_done = epoch
        self._arrived[worker] = time.monotonic()
        self.members.answered(self.workers[worker])  # it now waits at the barrier: never silent there
        self._barrier.append((worker, future))
        self._check_barrier()

    def _check_barrier(self) -> None:
        """When every active worker finished the epoch: validate, checkpoint, release them."""
        if not self._barrier:
            return
        if any(w.epoch_done < self.epoch for w in self.members.active()):
            return
        self._end_epoch()
        now = time.monotonic()
        for worker, future in self._barrier:
            # The fresh parameters: a worker that finished early would otherwise start the next
            # epoch from the version it left, as stale as the updates the others made meanwhile.
            self.workers[worker].last_seen = now  # its silence counts from its release
            future.set_result(self._reply(worker, self._barrier_params))
        self._barrier = []
        self._epoch_began = time.monotonic()

    def _end_epoch(self) -> None:
        finished, now = self.epoch, time.monotonic()
        self.epoch += 1
        # How long each worker waited at the barrier for the last one: a slow worker shows here.
        waits = {str(w): round(now - t, 2) for w, t in sorted(self._arrived.items())}
        seconds = round(now - self._epoch_began, 2) if self._epoch_began is not None else None
        self._arrived = {}
        self.events.emit("epoch_end", epoch=finished, version=self.version, samples_seen=self.samples_seen,
                         seconds=seconds, waits=waits)
        if self.records.end_epoch(self.progress, self.rule.state_dict(), self._warming_up()):
            self._diverged()
        if self.epoch >= self.config.epochs and self.outcome is None:
            self.outcome = "finished"

    def _leave(self, worker: int, reason: str) -> None:
        state = self.workers.get(worker)
        if state is not None:
            state.left = True
        self.rule.gone(worker)
        if reason.startswith("failed"):  # e.g. a shard it could not read: say so in the run, not only its log
            self.failures.append(f"worker {worker} {reason}")
            self._alert("error", AlertCode.WORKER_FAILED, f"worker {worker} {reason}", worker=worker)
        self._after_worker_gone()

    def _after_worker_gone(self) -> None:
        self._check_barrier()
        self.members.note_gone()

    def count_out_unregistered(self, join_timeout: float) -> None:
        """After --join-timeout: workers that never registered (their process died, or hangs, after
        RPC formed) are counted as lost, so that the run can end without them."""
        missing = self.members.count_out_unregistered()
        if not missing:
            return
        for worker in missing:
            self._alert("error", AlertCode.WORKER_LOST, f"worker {worker} never registered within "
                        f"{join_timeout:g}s (--join-timeout); the run goes on without it", worker)
        self._after_worker_gone()

    def _validate(self) -> None:
        _, diverged = self.records.validate(self.progress, self._warming_up())
        if diverged:
            self._diverged()

    def _diverged(self) -> None:
        if self.config.stop_on_divergence:
            self.outcome = "diverged"

    def _warming_up(self) -> bool:
        return self.schedule.warming_up(self._clock())

    def finish(self, validate: bool) -> None:
        """Last steps of a run (apply thread): the final validation and checkpoints."""
        self.records.finish(self.progress, self.rule.state_dict(), validate, self._warming_up())

    def checkpoint(self, tag: str) -> None:
        self.records.checkpoint(tag, self.progress, self.rule.state_dict())

    def _load_state(self, payload: dict[str, Any]) -> None:
        at = self.records.restore(payload)
        self.version, self.epoch, self.samples_seen = at.version, at.epoch, at.samples_seen
        self.lr = self.schedule(self._clock())
        if payload["rule"]["rule"] == self.rule.name:
            self.rule.load_state_dict(payload["rule"])
        else:  # resumed with --update-rule changed: the new rule starts with fresh state
            self.resume_note = f"update rule {payload['rule']['rule']} -> {self.rule.name}: its state starts fresh"

    def _alert(self, level: str, code: str, message: str, worker: int | None = None) -> None:
        self.events.emit("alert", level=level, code=code, message=message, worker=worker)

    # --- the monitor thread: metrics and liveness ---------------------------------------------
    def report(self, interval: float) -> None:
        """Emit ps_metrics and declare dead or silent workers lost (runs on the apply thread)."""
        self.events.emit(
            "ps_metrics", version=self.version, epoch=self.epoch, samples_seen=self.samples_seen,
            **self._interval.report(interval), dropped=self.dropped, lr=self.lr,
            rule={"name": self.rule.name, **self.rule.metrics()},
            busy=round(min(1.0, self._thread.busy_seconds() / interval), 3),
            live_workers=sum(w.active for w in self.workers.values()),
        )
        if self.config.max_staleness and self._interval.mostly_staler_than(self.config.max_staleness):
            self._alert("warning", AlertCode.STALENESS_HIGH,
                        f"most pushes in the last {interval:.0f}s were staler than "
                        f"{self.config.max_staleness} and were dropped: use fewer workers or raise the bound")
        self._interval = Interval()
        for lost in self.members.find_lost(self.epoch):
            self._alert("error", lost.code, lost.message, worker=lost.worker)
            self.rule.gone(lost.worker)
            if lost.died:
                self.events.emit("process_exit", role="worker", worker=lost.worker,
                                 pid=self.workers[lost.worker].pid, code=None, reason="lost")
        self._after_worker_gone()

    @property
    def never_registered(self) -> str:
        return self.members.never_registered

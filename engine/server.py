"""The parameter server: holds the global model, routes each push to its update rule.

Every state change runs on one *apply thread* fed by a queue, so RPC threads never block on the
optimizer and the algorithm reads in one place (`_apply_push`). Callers get a torch Future that
the apply thread completes; over RPC that Future is returned by `@async_execution` functions.
How a push becomes an update is the rule's business (engine/rules.py); the LR comes from the
schedule (engine/schedule.py), a function of the samples applied so far.

BatchNorm: workers train in train mode (batch statistics). Before validation and checkpoints the
PS recomputes the running statistics at the current weights on `bn_recompute` training samples
(or, with 0, takes the mean of the running statistics every worker sends with its pushes).
"""

from __future__ import annotations

import math
import queue
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn

from .checkpoint import CheckpointError, save_checkpoint
from .config import RunConfig
from .data import DataSpec, Head, ShardStream, make_loader
from .evaluate import evaluate, recompute_batchnorm
from .events import EventWriter
from .health import Health
from .models import build_for
from .rules import make_rule
from .schedule import LRSchedule


class FlatModel:
    """A model whose parameters, gradients and float buffers are views into one flat tensor each.

    One flat tensor moves over RPC as one message instead of one per layer. 4-D weights are laid
    out channels_last inside the buffer (on every device), so GPU convolutions need no copies.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = list(model.parameters())
        device = params[0].device
        self.params = torch.zeros(sum(p.numel() for p in params), device=device)
        self.grads = torch.zeros_like(self.params)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = _view(self.params[offset:offset + n], p.shape).copy_(p.detach())
            p.grad = _view(self.grads[offset:offset + n], p.shape)
            offset += n
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.buffers = (torch.cat([b.reshape(-1) for b in buffers]) if buffers
                        else torch.zeros(0, device=device))
        offset = 0
        for module in model.modules():
            for name, b in list(module.named_buffers(recurse=False)):
                if b is not None and b.is_floating_point():
                    n = b.numel()
                    setattr(module, name, self.buffers[offset:offset + n].view_as(b))
                    offset += n
        self.named_params = dict(model.named_parameters())

    def zero_grad(self) -> None:
        self.grads.zero_()


def _view(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # The layout inside the buffer must not depend on the device: a CPU PS and GPU workers
    # exchange raw buffers.
    if len(shape) == 4:
        o, i, h, w = shape
        return flat.view(o, h, w, i).permute(0, 3, 1, 2)
    return flat.view(shape)


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
class Reply:
    """What a worker gets back for a push."""

    version: int
    params: torch.Tensor | None
    stop: bool
    lr: float  # the scheduled LR now (workers with their own optimizer use it)


class ParameterServer:
    def __init__(self, config: RunConfig, data: DataSpec, events: EventWriter, num_workers: int,
                 device: torch.device, checkpoint_dir: Path, meta: dict[str, Any],
                 resume: dict[str, Any] | None = None, single: bool = False) -> None:
        self.config, self.data, self.events = config, data, events
        self.num_workers, self.device = num_workers, device
        self.checkpoint_dir, self.meta = checkpoint_dir, meta
        self.num_classes = len(data.classes)
        self.flat = FlatModel(build_for(config, self.num_classes, data.image_size).to(device))
        self.model = self.flat.model
        self.rule = make_rule(config, self.flat.params, self.flat.grads, self.model, single)
        self.schedule = LRSchedule(config, data.train.num_samples)
        self.version, self.epoch, self.samples_seen = 0, 0, 0
        self.lr = self.schedule(0)
        self.best_val_acc: float | None = None
        self.last_val: dict[str, Any] | None = None
        self._checkpointed_version = self._buffers_version = -1
        # As many loader processes as the BatchNorm pass has batches, at most: more would start and
        # decode (4 batches ahead each) only to be shut down.
        self._bn_loaders = min(config.loader_workers, -(-config.bn_recompute // config.batch_size))
        self._bn_stream = ShardStream(data.train, 0, 1, self._bn_loaders, config.batch_size, train=True,
                                      seed=config.seed + 1, augment=config.augment)
        self.resume_note = ""
        if resume:
            self._load_state(resume)
        self.health = Health(self.num_classes, config.chance_warmup_evals)
        self.workers: dict[int, WorkerState] = {}
        self.never_registered = ""  # "worker1 and worker2", once --join-timeout counted them out
        self.dropped = 0
        self.failures: list[str] = []  # why workers that failed left (their own words)
        self.outcome: str | None = None  # set when the run should end: finished/stopped/diverged
        self.stop_requested = threading.Event()
        self.all_left = threading.Event()
        self._barrier: list[tuple[int, torch.futures.Future]] = []
        self._barrier_params = not single  # the single process trains the PS's own model
        self._interval: dict[str, list[float]] = {"staleness": [], "apply_ms": []}
        self._interval_updates = 0
        self._host = socket.gethostname()
        self._pending_lock = threading.Lock()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._apply_thread = threading.Thread(target=self._apply_loop, name="ps-apply", daemon=True)
        self._apply_thread.start()

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
        self._heard(worker)
        if isinstance(grads, torch.Tensor) and grads.is_cuda and grads is not self.flat.grads:
            # RPC delivered the tensor on this thread's current stream; the apply thread uses
            # another, so wait here (on an RPC thread) until it has fully arrived.
            torch.cuda.current_stream(grads.device).synchronize()
        return self._submit(lambda: self._apply_push(worker, base_version, grads, buffers, samples,
                                                     metrics, reply_params))

    def refresh(self, worker: int) -> torch.futures.Future:
        """The current parameters for a worker about to take its first step."""
        self._heard(worker)

        def reply() -> Reply:
            self._answered(self.workers[worker])
            return self._reply(worker, True)

        return self._submit(reply)

    def pull(self) -> torch.futures.Future:
        """The plain transport's separate pull: every parameter as its own CPU tensor."""
        return self._submit(lambda: Reply(self.version, {n: p.detach().cpu().clone() for n, p in
                                                         self.flat.named_params.items()},
                                          self._stopping(), self.lr))

    def epoch_done(self, worker: int, epoch: int) -> torch.futures.Future:
        self._heard(worker)
        future: torch.futures.Future = torch.futures.Future()

        def run() -> None:
            try:
                self._epoch_done(worker, epoch, future)
            except Exception as exc:  # the caller gets the error; the apply thread lives on
                if not future.done():
                    future.set_exception(exc)

        self._queue.put(run)
        return future

    def _heard(self, worker: int) -> None:
        """A request arrived (RPC thread). While the PS owes a worker a reply, the worker is not
        silent, however long validation or a checkpoint keeps the apply thread busy."""
        with self._pending_lock:
            state = self.workers.get(worker)
            if state is not None:
                state.pending += 1

    def _answered(self, state: WorkerState) -> None:
        """The apply thread handles a request of this worker: it was heard from now."""
        with self._pending_lock:
            state.pending = max(0, state.pending - 1)
        state.last_seen = time.monotonic()

    def leave(self, worker: int, reason: str) -> torch.futures.Future:
        return self._submit(lambda: self._leave(worker, reason))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the apply thread and wait for its result (for the main thread's last steps)."""
        return self._submit(fn).wait()

    def _submit(self, fn: Callable[[], Any]) -> torch.futures.Future:
        future: torch.futures.Future = torch.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:  # hand the error to the caller instead of killing the thread
                future.set_exception(exc)

        self._queue.put(run)
        return future

    def _apply_loop(self) -> None:
        while (task := self._queue.get()) is not None:
            task()

    def close(self) -> None:
        self._queue.put(None)
        self._apply_thread.join(timeout=30)

    # --- the algorithm (apply thread only) ----------------------------------------------------
    def _register(self, worker: int, info: dict[str, Any]) -> dict[str, Any]:
        if info.get("data_problem"):  # its node's copy of the data differs: keep it out of the job
            self._alert("error", "data_mismatch", f"worker {worker} (host {info.get('host')}) "
                        f"refused to train: {info['data_problem']}", worker=worker)
            self.workers[worker] = WorkerState(pid=info["pid"], host=info["host"], left=True)
            self._after_worker_gone()
            return {"version": self.version, "epoch": self.epoch, "params": None, "stop": True, "lr": self.lr}
        self.workers[worker] = WorkerState(pid=info["pid"], host=info["host"],
                                           on_gpu=self.device.type == "cuda" and
                                           str(info.get("device", "")).startswith("cuda"))
        self.events.emit("worker_join", worker=worker, **info)
        if info.get("code_fingerprint") != self.meta["code"]["fingerprint"]:
            self._alert("error", "fingerprint_mismatch",
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
        self._answered(state)
        state.pushed = True
        if state.lost:
            state.lost = False
            self._alert("warning", "worker_lost", f"worker {worker} is back after being silent", worker)
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
            self._interval_updates += 1
            self.samples_seen += samples
        if buffers is not None:
            state.buffers = buffers
        self._interval["staleness"].append(staleness)
        self._interval["apply_ms"].append(1000 * (time.perf_counter() - start))
        if metrics is not None:
            self.events.emit("worker_metrics", worker=worker, staleness=staleness, **metrics)
            for alert in self.health.train_metrics(worker, float(metrics["loss"]), float(metrics["acc"])):
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
        return Reply(self.version, params, self._stopping(), self.lr)

    def _clock(self) -> float:
        """The schedule's clock: samples applied, in batches (engine/schedule.py)."""
        return self.samples_seen / self.config.batch_size

    def _stopping(self) -> bool:
        return self.outcome is not None or self.stop_requested.is_set()

    def _epoch_done(self, worker: int, epoch: int, future: torch.futures.Future) -> None:
        self.workers[worker].epoch_done = epoch
        self._answered(self.workers[worker])  # it now waits at the barrier: never silent there
        self._barrier.append((worker, future))
        self._check_barrier()

    def _check_barrier(self) -> None:
        """When every active worker finished the epoch: validate, checkpoint, release them."""
        if not self._barrier:
            return
        active = [w for w in self.workers.values() if w.active]
        if any(w.epoch_done < self.epoch for w in active):
            return
        self._end_epoch()
        now = time.monotonic()
        for worker, future in self._barrier:
            # The fresh parameters: a worker that finished early would otherwise start the next
            # epoch from the version it left, as stale as the updates the others made meanwhile.
            self.workers[worker].last_seen = now  # its silence counts from its release
            future.set_result(self._reply(worker, self._barrier_params))
        self._barrier = []

    def _end_epoch(self) -> None:
        finished = self.epoch
        self.epoch += 1
        self.events.emit("epoch_end", epoch=finished, version=self.version, samples_seen=self.samples_seen)
        result = self._validate()
        best = result is not None and (self.best_val_acc is None or result["acc"] >= self.best_val_acc)
        if best:
            self.best_val_acc = result["acc"]  # before `last` is written, so that it records it too
        self.checkpoint("last")
        if best:
            self.checkpoint("best")
        if self.epoch >= self.config.epochs and self.outcome is None:
            self.outcome = "finished"

    def _leave(self, worker: int, reason: str) -> None:
        state = self.workers.get(worker)
        if state is not None:
            state.left = True
        if reason.startswith("failed"):  # e.g. a shard it could not read: say so in the run, not only its log
            self.failures.append(f"worker {worker} {reason}")
            self._alert("error", "worker_failed", f"worker {worker} {reason}", worker=worker)
        self._after_worker_gone()

    def _after_worker_gone(self) -> None:
        self._check_barrier()
        # Only once every worker has registered: an early leaver must not end the run for the rest.
        if len(self.workers) >= self.num_workers and not any(w.active for w in self.workers.values()):
            self.all_left.set()

    def count_out_unregistered(self, join_timeout: float) -> None:
        """After --join-timeout: workers that never registered (their process died, or hangs, after
        RPC formed) are counted as lost, so that the run can end without them."""
        missing = [w for w in range(self.num_workers) if w not in self.workers]
        if not missing:
            return
        self.never_registered = worker_names(missing)
        for worker in missing:
            self.workers[worker] = WorkerState(pid=0, host="", lost=True)
            self._alert("error", "worker_lost", f"worker {worker} never registered within "
                        f"{join_timeout:g}s (--join-timeout); the run goes on without it", worker)
        self._after_worker_gone()

    def _sync_buffers(self) -> None:
        """Bring the BatchNorm statistics to the current weights (once per version): recomputed on
        `bn_recompute` training samples, else the mean of every worker's latest running stats."""
        if not self.flat.buffers.numel() or self._buffers_version == self.version:
            return
        self._buffers_version = self.version
        if self.config.bn_recompute:
            self._bn_stream.set_epoch(self.version)  # other samples each time
            # Loader processes: decoding the samples inline took ~1 s of every epoch end.
            batches = make_loader(Head(self._bn_stream), self._bn_loaders)
            recompute_batchnorm(self.model, iter(batches), self.config.bn_recompute, self.device)
            return
        latest = [w.buffers for w in self.workers.values() if w.buffers is not None]
        if latest:
            self.flat.buffers.copy_(torch.stack([b.to(self.device).float() for b in latest]).mean(0))

    def _validate(self) -> dict[str, Any] | None:
        self._sync_buffers()
        result = evaluate(self.model, self.data.val, self.device, self.config.loader_workers)
        self.last_val = {**result, "version": self.version}
        self.events.emit("validation", version=self.version, epoch=self.epoch,
                         samples_seen=self.samples_seen, chance=1 / self.num_classes, **result)
        warming_up = self.schedule.warming_up(self._clock())
        for alert in self.health.validation(result["loss"], result["acc"], result["count"], warming_up):
            self._alert(*alert)
            if self.config.stop_on_divergence and self.health.diverged():
                self.outcome = "diverged"
        return result

    def finish(self, validate: bool) -> None:
        """Last steps of a run (apply thread): validate the final model if asked and not yet
        done at this version, and make sure `last` holds the final version."""
        if validate and (self.last_val is None or self.last_val.get("version") != self.version):
            result = self._validate()
            if self.best_val_acc is None or result["acc"] >= self.best_val_acc:
                self.best_val_acc = result["acc"]
                self.checkpoint("best")
        if self._checkpointed_version != self.version:
            self.checkpoint("last")

    def checkpoint(self, tag: str) -> None:
        """Write checkpoints/<run>/<tag>.pt atomically; a failure is an alert, not a crash."""
        self._sync_buffers()
        path = self.checkpoint_dir / f"{tag}.pt"
        payload = {
            "model": self.model.state_dict(),
            "rule": self.rule.state_dict(),
            "version": self.version,
            "epoch": self.epoch,
            "samples_seen": self.samples_seen,
            "best_val_acc": self.best_val_acc,
            "val": self.last_val,
            "config": self.config.to_dict(),
            "meta": self.meta,
        }
        try:
            save_checkpoint(path, payload)
        except CheckpointError as exc:
            self._alert("error", "checkpoint_failed", str(exc))
            return
        acc = self.last_val["acc"] if self.last_val else None
        if tag == "last":
            self._checkpointed_version = self.version
        self.events.emit("checkpoint", tag=tag, path=str(path), version=self.version,
                         epoch=self.epoch, val_acc=acc)

    def _load_state(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.version, self.epoch = payload["version"], payload["epoch"]
        self.samples_seen = payload.get("samples_seen", 0)
        self.lr = self.schedule(self._clock())
        if payload["rule"]["rule"] == self.rule.name:
            self.rule.load_state_dict(payload["rule"])
        else:  # resumed with --update-rule changed: the new rule starts with fresh state
            self.resume_note = f"update rule {payload['rule']['rule']} -> {self.rule.name}: its state starts fresh"
        self.best_val_acc = payload.get("best_val_acc")

    def _alert(self, level: str, code: str, message: str, worker: int | None = None) -> None:
        self.events.emit("alert", level=level, code=code, message=message, worker=worker)

    # --- the monitor thread: metrics and liveness ---------------------------------------------
    def report(self, interval: float) -> None:
        """Emit ps_metrics and declare dead or silent workers lost (runs on the apply thread)."""
        stale = self._interval["staleness"]
        applies = self._interval["apply_ms"]
        hist = Counter(stale)
        self.events.emit(
            "ps_metrics", version=self.version, epoch=self.epoch, samples_seen=self.samples_seen,
            updates_per_s=round(self._interval_updates / interval, 2),
            staleness={"p50": _pct(stale, 50), "p95": _pct(stale, 95), "max": max(stale, default=0),
                       "hist": {str(k): v for k, v in sorted(hist.items())}},
            dropped=self.dropped, lr=self.lr, rule={"name": self.rule.name, **self.rule.metrics()},
            apply_ms=round(statistics.median(applies), 3) if applies else None,
            live_workers=sum(w.active for w in self.workers.values()),
        )
        if self.config.max_staleness and stale and sum(
                s > self.config.max_staleness for s in stale) > len(stale) / 2:
            self._alert("warning", "staleness_high",
                        f"most pushes in the last {interval:.0f}s were staler than "
                        f"{self.config.max_staleness} and were dropped: use fewer workers or raise the bound")
        self._interval = {"staleness": [], "apply_ms": []}
        self._interval_updates = 0
        now = time.monotonic()
        waiting = {w for w, s in self.workers.items() if s.epoch_done >= self.epoch}
        for index, state in self.workers.items():
            if not state.active:
                continue
            owed = state.pending > 0  # a request of its waits behind the apply thread
            if state.host == self._host and not _alive(state.pid):
                state.lost = True
                self._alert("error", "worker_lost", f"worker {index} (pid {state.pid}) died; the run "
                            "goes on with the other workers", worker=index)
                self.events.emit("process_exit", role="worker", worker=index, pid=state.pid,
                                 code=None, reason="lost")
            elif index not in waiting and not owed and now - state.last_seen > self._silence_limit(state):
                state.lost = True
                self._alert("error", "worker_silent", f"worker {index} sent nothing for "
                            f"{self._silence_limit(state):.0f}s; counted as lost", worker=index)
        self._after_worker_gone()


    def _silence_limit(self, state: WorkerState) -> float:
        """How long a worker may send nothing. Its first step may take minutes (torch.compile,
        cudnn autotuning, a slow first shard): until its first push, the start-up bound holds."""
        if state.pushed:
            return self.config.worker_timeout
        return max(self.config.worker_timeout, self.config.join_timeout)


def worker_names(workers: list[int]) -> str:
    """[0, 1, 2] -> "worker0, worker1 and worker2"."""
    names = [f"worker{w}" for w in workers]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _pct(values: list[int], q: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


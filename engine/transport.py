"""The whole RPC surface of adt, in one module: how workers reach the parameter server.

Workers hold a client with five calls — register, refresh (the parameters of the moment, taken
after the slow first step), push (which also returns fresh parameters: one round trip per step),
epoch_done (which pings the PS while it waits, and returns fresh parameters too) and leave. `RpcClient`
goes over torch.distributed.rpc (TensorPipe); `LocalClient` calls the server in-process for
`--workers 0`. Moving off torch RPC means rewriting this file only.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed import rpc

from . import listen
from .config import RunConfig
from .errors import JoinTimeout, SupervisorGone
from .placement import device_for, local_slot
from .protocol import Reply, worker_names

if TYPE_CHECKING:  # the PS process hands its server in; the workers never import it
    from .server import ParameterServer

PS_NAME = "ps"
PING_EVERY = 5.0  # seconds at the epoch barrier between pings of the PS
PARENT_CHECK_EVERY = 0.5  # seconds between looks at whether the supervisor still lives, while joining
_server: ParameterServer | None = None  # set in the PS process by serve()


def init(rank: int, world_size: int, host: str, port: int, join_timeout: float,
         config: RunConfig | None = None, parent: int | None = None,
         timeout: float = 120.0) -> RunConfig | None:
    """Join the RPC group: rank 0 is the PS, rank k > 0 is worker k-1. Returns the job's config:
    rank 0 gives it (and publishes it in the rendezvous store); every worker gets it from there,
    so that devices come from the run's config on every machine, with or without a run dir.

    The rendezvous store (rank 0's, unless torchrun serves one) listens on `host` only, and
    TensorPipe and Gloo on the interface holding `host` when it is an address of this machine.
    When both a worker's device and the PS's are GPUs, a device map lets TensorPipe move gradients
    and parameters GPU to GPU, with no host round trip.

    Raises JoinTimeout, naming who never came, when the group has not formed after `join_timeout`
    seconds, and SupervisorGone once `parent` (the pid that started this process, read when it
    started) is no longer its parent. torch joins on a helper thread while this (main) thread
    waits, so that a stop signal ends the wait at once (engine/stopping.py): inside torch's
    rendezvous it would run only when torch returns. After a JoinTimeout or a stop that thread may
    still be stuck in torch, so the process must leave with os._exit.
    """
    listen.pin_interface(host)
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=listen.rendezvous_url(host, port, join_timeout), rpc_timeout=timeout,
        num_worker_threads=16)
    name = PS_NAME if rank == 0 else f"worker{rank - 1}"
    received: list[RunConfig] = []

    def receive(text: str) -> None:  # on the join thread, inside the rendezvous, before RPC forms
        received.append(RunConfig.from_dict(json.loads(text)))
        _set_devices(options, received[0], rank)

    if rank == 0:
        assert config is not None, "the PS gives the job's config"
        _set_devices(options, config, rank)
        listen.share_config(publish=json.dumps(config.to_dict()))
    else:
        listen.share_config(receive=receive)
    failure: list[BaseException] = []
    done = threading.Event()

    def join() -> None:
        try:
            rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)
        except BaseException as exc:  # re-raised on the main thread
            failure.append(exc)
        done.set()

    threading.Thread(target=join, name="adt-rpc-join", daemon=True).start()
    _wait_for_the_group(done, join_timeout, parent,
                        lambda: _not_joined(rank, world_size, host, port, join_timeout))
    if failure:
        raise failure[0]
    return config if rank == 0 else received[0]


def _wait_for_the_group(done: threading.Event, join_timeout: float, parent: int | None,
                        missing: Any) -> None:
    """Until the group forms: JoinTimeout after `join_timeout`, SupervisorGone as soon as the
    process that started this one (adt's supervisor, or torchrun's agent) dies. A job still
    forming cannot be watched or stopped by anyone else, and its peers were most likely killed
    with it (a closed terminal, the OOM killer): waiting the whole join timeout would hold the
    port and, on a GPU, its memory for minutes. Once the job trains it outlives its supervisor
    (`adt watch` re-attaches)."""
    deadline = time.monotonic() + join_timeout
    while not done.wait(PARENT_CHECK_EVERY):
        if parent is not None and os.getppid() != parent:
            raise SupervisorGone(f"its supervisor (pid {parent}, the process that started it) died "
                                 "while the job was still forming; nothing was trained")
        if time.monotonic() > deadline:
            raise JoinTimeout(missing())


def _set_devices(options: rpc.TensorPipeRpcBackendOptions, config: RunConfig, rank: int) -> None:
    """TensorPipe's devices: the PS's GPU, and each GPU worker's map from its GPU to the PS's."""
    if not config.ps_device.startswith("cuda"):
        return  # CPU tensors travel as they are
    if rank == 0:
        options.set_devices([config.ps_device])
        return
    mine = device_for(config.device, local_slot(rank - 1))
    if mine.type == "cuda":
        options.set_device_map(PS_NAME, {str(mine): config.ps_device})


def _not_joined(rank: int, world_size: int, host: str, port: int, join_timeout: float) -> str:
    """Who kept the RPC group from forming, as far as this rank can tell."""
    within = f"within {join_timeout:g}s (--join-timeout)"
    if rank == 0:
        missing = [r - 1 for r in range(1, world_size) if r not in listen.arrived]
        if missing:
            return f"{worker_names(missing)} never joined {within}; see their logs"
        return f"every worker reached the rendezvous, but the RPC group did not form {within}"
    if rank not in listen.arrived:
        return f"the parameter server's rendezvous at {host}:{port} did not answer {within}"
    return f"the RPC group did not form {within}: the parameter server or another worker never joined"


def serve(server: ParameterServer) -> None:
    global _server
    _server = server


def shutdown() -> None:
    # Our own protocol (leave + all_left) already drained the work, and a graceful shutdown would
    # hang forever on a dead peer; so never wait here.
    rpc.shutdown(graceful=False)


# --- PS side: module-level functions, because RPC pickles functions by qualified name --------
def _job() -> dict[str, Any]:
    return _server.job()


@rpc.functions.async_execution
def _register(worker: int, info: dict[str, Any]) -> torch.futures.Future:
    return _server.register(worker, info)


@rpc.functions.async_execution
def _push(worker: int, base_version: int, grads: torch.Tensor, buffers: torch.Tensor, samples: int,
          metrics: dict[str, Any] | None) -> torch.futures.Future:
    return _server.push(worker, base_version, grads, buffers, samples, metrics)


@rpc.functions.async_execution
def _refresh(worker: int) -> torch.futures.Future:
    return _server.refresh(worker)


@rpc.functions.async_execution
def _pull() -> torch.futures.Future:
    return _server.pull()


@rpc.functions.async_execution
def _epoch_done(worker: int, epoch: int) -> torch.futures.Future:
    return _server.epoch_done(worker, epoch)


def _ping() -> None:
    """Answered on an RPC thread, never queued behind the apply thread: proof the PS is there."""


@rpc.functions.async_execution
def _leave(worker: int, reason: str) -> torch.futures.Future:
    return _server.leave(worker, reason)


def result(future: torch.futures.Future) -> Any:
    """The future's value, waited for in Python: `Future.wait()` blocks inside torch, where no
    signal handler runs, so a stop (and its watchdog, engine/stopping.py) would wait for the RPC
    timeout when the PS stops answering."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    while not done.wait(0.1):
        pass
    return future.wait()


class RpcClient:
    """A worker's view of a remote PS."""

    shares_model = False

    def __init__(self, worker: int, ps_timeout: float = 60.0) -> None:
        self.worker = worker
        self.ps_timeout = ps_timeout  # the job's --worker-timeout, once the worker has the config

    def job(self) -> dict[str, Any]:
        return rpc.rpc_sync(PS_NAME, _job)

    def register(self, info: dict[str, Any]) -> dict[str, Any]:
        return rpc.rpc_sync(PS_NAME, _register, args=(self.worker, info))

    def push(self, base_version: int, grads: torch.Tensor, buffers: torch.Tensor, samples: int,
             metrics: dict[str, Any] | None) -> Reply:
        return self.wait(self.push_async(base_version, grads, buffers, samples, metrics))

    def push_async(self, base_version: int, grads: torch.Tensor, buffers: torch.Tensor, samples: int,
                   metrics: dict[str, Any] | None) -> torch.futures.Future:
        # No RPC timeout: a push may wait behind a validation longer than any fixed bound; `wait`
        # pings the PS instead, so a PS that is gone is still noticed.
        return rpc.rpc_async(PS_NAME, _push, args=(self.worker, base_version, grads, buffers, samples,
                                                   metrics), timeout=0)

    def pull(self) -> Reply:
        return rpc.rpc_sync(PS_NAME, _pull)

    def refresh(self) -> Reply:
        return self.wait(rpc.rpc_async(PS_NAME, _refresh, args=(self.worker,), timeout=0))

    def epoch_done(self, epoch: int) -> Reply:
        """Wait at the epoch barrier, which lasts the slowest worker's epoch plus the PS's
        validation; the reply holds the parameters to start the next epoch from."""
        return self.wait(rpc.rpc_async(PS_NAME, _epoch_done, args=(self.worker, epoch), timeout=0))

    def wait(self, future: torch.futures.Future) -> Any:
        """The reply to a call without a timeout, however long the PS is busy, as long as the PS
        answers a ping (on an RPC thread, never behind its apply thread) every PING_EVERY seconds
        within `ps_timeout`; else it is gone (dead, stopped, cut off): RuntimeError, as for a
        failed push. Waited for in Python, so that a stop signal's handler runs meanwhile."""
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        next_ping = time.monotonic() + PING_EVERY
        while not answered.wait(0.1):
            if time.monotonic() >= next_ping:
                result(rpc.rpc_async(PS_NAME, _ping, timeout=self.ps_timeout))
                next_ping = time.monotonic() + PING_EVERY
        return future.wait()

    def leave(self, reason: str) -> None:
        rpc.rpc_sync(PS_NAME, _leave, args=(self.worker, reason), timeout=30)


class LocalClient:
    """The same calls, in-process and zero-copy: the worker trains the server's own model."""

    shares_model = True

    def __init__(self, server: ParameterServer) -> None:
        self.server = server
        self.worker = 0

    def register(self, info: dict[str, Any]) -> dict[str, Any]:
        return self.server.register(0, info).wait()

    def push(self, base_version: int, grads: torch.Tensor, buffers: torch.Tensor, samples: int,
             metrics: dict[str, Any] | None) -> Reply:
        return self.server.push(0, base_version, grads, buffers, samples, metrics, reply_params=False).wait()

    def epoch_done(self, epoch: int) -> Reply:
        return self.server.epoch_done(0, epoch).wait()

    def leave(self, reason: str) -> None:
        self.server.leave(0, reason).wait()


def rpc_env() -> tuple[int, int, str, int]:
    """RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as set by the supervisor or torchrun."""
    try:
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]))
    except KeyError as exc:
        raise SystemExit(f"adt node: environment variable {exc} is not set. Fix: start nodes with "
                         "`adt run` or torchrun, which set RANK, WORLD_SIZE and MASTER_PORT.") from None



"""The whole RPC surface of adt, in one module: how workers reach the parameter server.

Workers hold a client with four calls — register, push (which also returns fresh parameters:
one round trip per step), epoch_done and leave. `RpcClient` goes over torch.distributed.rpc
(TensorPipe); `LocalClient` calls the server in-process for `--workers 0`. Moving off torch RPC
means rewriting this file only.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.distributed import rpc

from . import listen
from .server import ParameterServer, Reply, resolve_device

PS_NAME = "ps"
_server: ParameterServer | None = None  # set in the PS process by serve()


def init(rank: int, world_size: int, host: str, port: int, timeout: float = 120.0) -> None:
    """Join the RPC group: rank 0 is the PS, rank k > 0 is worker k-1.

    The rendezvous store (rank 0's, unless torchrun serves one) listens on `host` only, and
    TensorPipe and Gloo on the interface holding `host` when it is an address of this machine.
    When both the worker's device (ADT_DEVICE) and the PS's (ADT_PS_DEVICE) are GPUs, a device
    map lets TensorPipe move gradients and parameters GPU to GPU, with no host round trip.
    """
    listen.pin_interface(host)
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=listen.rendezvous_url(host, port), rpc_timeout=timeout, num_worker_threads=16)
    name = PS_NAME if rank == 0 else f"worker{rank - 1}"
    ps_device = os.environ.get("ADT_PS_DEVICE", "cpu")
    if ps_device.startswith("cuda"):
        ps_device = ps_device if ":" in ps_device else "cuda:0"
        if rank == 0:
            options.set_devices([ps_device])
        else:
            device = os.environ.get("ADT_DEVICE", "cpu")
            if device.startswith("cuda"):
                options.set_device_map(PS_NAME, {str(resolve_device(device, rank - 1)): ps_device})
    rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=options)


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
def _pull() -> torch.futures.Future:
    return _server.pull()


@rpc.functions.async_execution
def _epoch_done(worker: int, epoch: int) -> torch.futures.Future:
    return _server.epoch_done(worker, epoch)


@rpc.functions.async_execution
def _leave(worker: int, reason: str) -> torch.futures.Future:
    return _server.leave(worker, reason)


class RpcClient:
    """A worker's view of a remote PS."""

    shares_model = False

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def job(self) -> dict[str, Any]:
        return rpc.rpc_sync(PS_NAME, _job)

    def register(self, info: dict[str, Any]) -> dict[str, Any]:
        return rpc.rpc_sync(PS_NAME, _register, args=(self.worker, info))

    def push(self, base_version: int, grads: torch.Tensor, buffers: torch.Tensor, samples: int,
             metrics: dict[str, Any] | None) -> Reply:
        return self.push_async(base_version, grads, buffers, samples, metrics).wait()

    def push_async(self, base_version: int, grads: torch.Tensor, buffers: torch.Tensor, samples: int,
                   metrics: dict[str, Any] | None) -> torch.futures.Future:
        return rpc.rpc_async(PS_NAME, _push, args=(self.worker, base_version, grads, buffers, samples, metrics))

    def pull(self) -> Reply:
        return rpc.rpc_sync(PS_NAME, _pull)

    def epoch_done(self, epoch: int) -> bool:
        # Waiting at the epoch barrier includes the PS's validation, so no RPC timeout here.
        return rpc.rpc_sync(PS_NAME, _epoch_done, args=(self.worker, epoch), timeout=0)

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

    def epoch_done(self, epoch: int) -> bool:
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



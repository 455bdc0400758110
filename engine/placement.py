"""Where a job's processes run: workers and the PS on GPUs or the CPU, loader processes per core.

Decided once, at the edge (`adt run`, `adt check`, `adt launch`), and written into the run's
config as concrete values: `device` is `cpu`, `cuda` (worker k on this machine's GPU k mod G) or
`cuda:N`; `ps_device` is `cpu` or `cuda:N`; `workers` and `loader_workers` are counts. Every
process reads its own device from that config (`worker_device`), never from a variable that only
one launcher sets. The GPU and core counts are arguments, so the whole table of (GPUs, flags) ->
placement is tested without a GPU. No torch import here, except in `gpu_count`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import AUTO, ConfigError, RunConfig

if TYPE_CHECKING:
    import torch

MAX_LOADERS = 12  # decoding processes per GPU process: DDP on two H200s scaled 1.90x with 12, 1.63x with 6
CPU_WORKERS = 2  # with no GPU: the PS and two workers, the main job's async demonstration

# Why a CPU PS is refused beside GPU workers: measured on two H200s (issue 20), ResNet-18.
CPU_PS_REASON = ("every step would carry the gradients from the GPU to the host, wait for a CPU "
                 "optimizer step and carry the parameters back (measured on two H200s: 5-9 updates/s "
                 "where one process on one GPU made 64-89; 0.09x DDP's images/s)")


@dataclass(frozen=True)
class Placement:
    """Concrete devices for one machine's share of a job."""

    device: str  # the workers' device as the config says it: cpu, cuda (spread) or cuda:N
    workers: int  # 0: one process trains (the single process)
    worker_devices: tuple[str, ...]  # this machine's workers, in order; the single process's when 0
    ps_device: str  # the parameter server's, or the single process's
    loader_workers: int  # decoding processes per training process

    def describe(self) -> str:
        """One line for the preflight: 'worker 0 -> cuda:0, worker 1 -> cuda:1, PS -> cuda:0, ...'."""
        loaders = f"{self.loader_workers} loader process{'es' if self.loader_workers != 1 else ''}"
        if not self.workers:
            return f"placement: one process -> {self.ps_device}, {loaders}"
        shown = [f"worker {k} -> {d}" for k, d in enumerate(self.worker_devices[:4])]
        if len(self.worker_devices) > 4:
            shown.append(f"... worker {len(self.worker_devices) - 1} -> {self.worker_devices[-1]}")
        return f"placement: {', '.join(shown)}, PS -> {self.ps_device}, {loaders} each"


def worker_device(device: str, slot: int, gpus: int) -> str:
    """The device of the worker in `slot` on this machine (its index among this machine's workers)."""
    if device == "cuda":
        return f"cuda:{slot % max(1, gpus)}"
    return device


def local_slot(worker: int, env: Mapping[str, str] = os.environ) -> int:
    """A worker's index among its machine's workers. Under torchrun, its LOCAL_RANK, less one on
    node 0 (GROUP_RANK 0), whose local rank 0 is the PS; under `adt run`, the worker index."""
    if "LOCAL_RANK" not in env:
        return worker
    local = int(env["LOCAL_RANK"])
    return local - 1 if env.get("GROUP_RANK", "0") == "0" else local


def device_for(name: str, slot: int = 0) -> torch.device:
    """The torch device a process in `slot` uses for the config's device `name`."""
    import torch

    if name == "auto":  # a config built without the edge's placement (tests, scripts)
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(worker_device(name, slot, gpu_count()))


def loader_processes(cpus: int, training_processes: int, on_gpu: bool) -> int:
    """Decoding processes per training process. On a GPU the cores left over go to decoding (up to
    MAX_LOADERS each); on the CPU the training processes need the cores themselves."""
    if not on_gpu:
        return 1
    spare = cpus - training_processes - 1  # the PS or supervisor keeps one core
    return max(1, min(MAX_LOADERS, spare // max(1, training_processes)))


def _check_gpu(name: str, value: str, gpus: int) -> None:
    if not value.startswith("cuda"):
        return
    if gpus == 0:
        raise ConfigError(name, f"is {value!r}, but torch sees no CUDA GPU on this machine "
                          "(torch.cuda.device_count() is 0; check the driver, CUDA_VISIBLE_DEVICES "
                          "and that torch is a CUDA build)", "use cpu, or auto (the default)")
    index = value.partition(":")[2]
    if index and int(index) >= gpus:
        raise ConfigError(name, f"is {value!r}, but this machine has {gpus} GPU"
                          f"{'s' if gpus > 1 else ''} (cuda:0..cuda:{gpus - 1})",
                          f"use an index below {gpus}, or cuda to spread the workers over them")


def plan(config: RunConfig, gpus: int, cpus: int, local_workers: int | None = None) -> Placement:
    """The placement for `config` on a machine with `gpus` GPUs and `cpus` cores.

    `local_workers`: the workers on this machine when they are fewer than the job's (adt launch);
    they are slots 0.. of this machine. Raises ConfigError naming the field that cannot work.
    """
    device = config.device
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    _check_gpu("device", device, gpus)
    on_gpu = device.startswith("cuda")
    workers = config.workers
    if workers == AUTO:  # one per GPU; on one GPU one process trains fastest to the same accuracy
        workers = (gpus if gpus >= 2 and device == "cuda" else 0) if on_gpu else CPU_WORKERS
    here = workers if local_workers is None else local_workers
    devices = tuple(worker_device(device, k, gpus) for k in range(max(1, here)))
    if workers == 0:
        ps = devices[0]
    else:
        ps = config.ps_device
        _check_gpu("ps_device", ps, gpus)
        if ps == "cpu" and on_gpu:
            raise ConfigError("ps_device", f"is 'cpu' while the workers train on {device}: {CPU_PS_REASON}",
                              "leave out --ps-device (the PS then sits on a GPU), or pass --ps-device cuda")
        if ps in ("auto", "cuda"):
            ps = _ps_gpu(devices, gpus) if on_gpu or ps == "cuda" else "cpu"
    loaders = config.loader_workers
    if loaders == AUTO:
        loaders = loader_processes(cpus, max(1, here), on_gpu)
    return Placement(device if workers else ps, workers, devices if workers else (), ps, loaders)


def _ps_gpu(worker_devices: tuple[str, ...], gpus: int) -> str:
    """A GPU of its own when one is spare, else worker 0's."""
    used = set(worker_devices)
    spare = [f"cuda:{i}" for i in range(gpus) if f"cuda:{i}" not in used]
    return spare[0] if spare else (worker_devices[0] if worker_devices[0].startswith("cuda") else "cuda:0")


def apply(config: RunConfig, placement: Placement) -> RunConfig:
    """Write the placement into the config (what config.json and every process then read)."""
    config.device, config.ps_device = placement.device, placement.ps_device
    if config.workers == AUTO:
        config.workers = placement.workers
    config.loader_workers = placement.loader_workers
    return config


def gpu_count() -> int:
    """CUDA GPUs that torch can use here (0 without a driver or with a CPU build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def place(config: RunConfig, local_workers: int | None = None) -> Placement:
    """Plan this machine's placement and write it into `config`."""
    placement = plan(config, gpu_count(), os.cpu_count() or 1, local_workers)
    apply(config, placement)
    return placement

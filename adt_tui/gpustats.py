"""GPU memory and utilization of the job's processes, from NVML (nvidia-ml-py, as nvitop uses).

Optional: without the `pynvml` module, an NVIDIA driver or a GPU, `GpuStats.available` is False,
`sample()` returns nothing and the monitor shows no GPU columns. Nothing here raises.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuUsage:
    index: int  # the device's NVML index (as nvidia-smi numbers it)
    memory_bytes: int  # used by the process tree on that device (whole device if `device_wide`)
    utilization: float | None  # SM %, of the process when NVML can say, else of the device
    device_wide: bool = False  # the process was not visible to NVML: device numbers instead


def _load() -> Any:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no module, no driver, no GPU: all mean "no GPU columns"
        return None


class GpuStats:
    """One NVML session; `sample()` answers for process trees (a root pid and its children)."""

    def __init__(self, nvml: Any = None, load: bool = True) -> None:
        """`nvml` replaces the pynvml module (tests pass a fake); `load=False` means no GPU."""
        self.nvml = nvml if nvml is not None else _load() if load else None
        self._handles: list[Any] = []
        self._seen: dict[int, int] = {}  # device -> NVML timestamp of the last utilization read
        if self.nvml is not None:
            try:
                count = self.nvml.nvmlDeviceGetCount()
                self._handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception:
                self.nvml = None

    @property
    def available(self) -> bool:
        return self.nvml is not None and bool(self._handles)

    def sample(self, trees: Mapping[int, Iterable[int]],
               devices: Mapping[int, int] | None = None) -> dict[int, GpuUsage]:
        """Usage per root pid. `trees` maps a root pid to every pid of its tree; `devices` maps a
        root pid to the device index it was told to use, for when NVML cannot see its pids
        (another PID namespace, e.g. a container): then the device's own numbers stand in."""
        if not self.available:
            return {}
        result: dict[int, GpuUsage] = {}
        owner = {pid: root for root, pids in trees.items() for pid in pids}
        for index, handle in enumerate(self._handles):
            procs = self._processes(handle)
            util = self._process_util(index, handle)
            for proc in procs:
                root = owner.get(proc.pid)
                if root is None:
                    continue
                used = int(getattr(proc, "usedGpuMemory", 0) or 0)
                prev = result.get(root)
                if prev is not None and prev.index == index:  # a second process of the tree
                    used += prev.memory_bytes
                result[root] = GpuUsage(index, used, util.get(proc.pid, self._device_util(handle)))
        for root, index in (devices or {}).items():
            if root in trees and root not in result and 0 <= index < len(self._handles):
                handle = self._handles[index]
                try:
                    used = int(self.nvml.nvmlDeviceGetMemoryInfo(handle).used)
                except Exception:
                    continue
                result[root] = GpuUsage(index, used, self._device_util(handle), device_wide=True)
        return result

    def _processes(self, handle: Any) -> list[Any]:
        try:
            return list(self.nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        except Exception:
            return []

    def _process_util(self, index: int, handle: Any) -> dict[int, float]:
        """SM utilization per pid since the last read (not every GPU or driver supports it)."""
        since = self._seen.get(index, int((time.time() - 2) * 1e6))
        try:
            samples = self.nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except Exception:
            return {}
        out: dict[int, float] = {}
        for s in samples:
            out[s.pid] = max(out.get(s.pid, 0.0), float(s.smUtil))
            self._seen[index] = max(self._seen.get(index, 0), int(s.timeStamp))
        return out

    def _device_util(self, handle: Any) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            return None

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass
            self.nvml = None

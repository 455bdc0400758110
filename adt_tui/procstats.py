"""CPU % and resident memory of the job's processes (each with its DataLoader children), via psutil."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # summed over the process tree; 100 = one full core
    rss_bytes: int
    tree: tuple[int, ...] = ()  # the root pid and its children (GPU use is found by these)


class ProcStats:
    """Keeps one psutil.Process per pid: cpu_percent() measures since that object's last call."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pids: Iterable[int]) -> dict[int, Usage]:
        """Usage of each live pid (dead ones are left out)."""
        result: dict[int, Usage] = {}
        for pid in pids:
            try:
                root = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                cpu, rss, tree = 0.0, 0, []
                for proc in [root, *root.children(recursive=True)]:
                    tree.append(proc.pid)
                    known = self._procs.setdefault(proc.pid, proc)
                    with known.oneshot():
                        cpu += known.cpu_percent(None)
                        rss += known.memory_info().rss
                result[pid] = Usage(cpu, rss, tuple(tree))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._procs.pop(pid, None)
        return result

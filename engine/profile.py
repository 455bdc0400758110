"""Opt-in step profiler for finding adt's own overhead: `ADT_PROFILE=DIR adt run ...`.

Each training process (the single process, every worker) records steps 30..39 with
torch.profiler and writes `DIR/<name>.txt`: the steps' wall time against the GPU's busy time,
and the top operators by host and by GPU time. Off (one attribute check per step) when unset.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

SKIP, WARMUP, ACTIVE = 25, 5, 10  # past compilation and cudnn autotuning


class StepProfiler:
    def __init__(self, name: str) -> None:
        folder = os.environ.get("ADT_PROFILE", "")
        self.path = Path(folder) / f"{name}.txt" if folder else None
        self.steps = 0
        self.marks: list[float] = []
        if self.path is None:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.profiler = profile(activities=activities, on_trace_ready=self._write,
                                schedule=schedule(wait=SKIP, warmup=WARMUP, active=ACTIVE, repeat=1))
        self.profiler.start()

    def step(self) -> None:
        if self.path is None:
            return
        self.steps += 1
        if SKIP + WARMUP <= self.steps <= SKIP + WARMUP + ACTIVE:
            self.marks.append(time.perf_counter())
        self.profiler.step()
        if self.steps == SKIP + WARMUP + ACTIVE + 1:
            self.profiler.stop()
            self.path = None

    def _write(self, prof: profile) -> None:
        averages = prof.key_averages()
        wall_ms = 1000 * (self.marks[-1] - self.marks[0]) / max(1, len(self.marks) - 1)
        gpu_ms = _busy_us(prof) / 1000 / ACTIVE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"steps profiled: {ACTIVE}; wall per step {wall_ms:.2f} ms; GPU busy per step {gpu_ms:.2f} ms "
                 f"({100 * gpu_ms / wall_ms if wall_ms else 0:.0f}% of the wall time)", ""]
        if torch.cuda.is_available():
            lines += ["top by GPU time:", averages.table(sort_by="self_device_time_total", row_limit=25), ""]
        lines += ["top by host time:", averages.table(sort_by="self_cpu_time_total", row_limit=25)]
        self.path.write_text("\n".join(lines))


def _busy_us(prof: profile) -> float:
    """Time with at least one kernel or copy running on the GPU (the union of their intervals).

    Annotations (the profiler's own `ProfilerStep#N` spans the whole step on the GPU's timeline
    too) are not work: counted, they made every step look 99% busy."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                   and not e.name.startswith("ProfilerStep"))
    busy, reached = 0.0, float("-inf")
    for start, end in spans:
        busy += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return busy

"""What the PS measures between two `ps_metrics` reports: every push's staleness and apply time,
and the updates applied (dropped pushes count for staleness, not as updates)."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any


class Interval:
    def __init__(self) -> None:
        self.staleness: list[int] = []
        self.apply_ms: list[float] = []
        self.updates = 0

    def push(self, staleness: int, apply_ms: float, applied: bool) -> None:
        self.staleness.append(staleness)
        self.apply_ms.append(apply_ms)
        self.updates += applied

    def report(self, seconds: float) -> dict[str, Any]:
        """The interval's fields of `ps_metrics`."""
        stale = self.staleness
        return {"updates_per_s": round(self.updates / seconds, 2),
                "staleness": {"p50": _pct(stale, 50), "p95": _pct(stale, 95), "max": max(stale, default=0),
                              "hist": {str(k): v for k, v in sorted(Counter(stale).items())}},
                "apply_ms": round(statistics.median(self.apply_ms), 3) if self.apply_ms else None}

    def mostly_staler_than(self, bound: int) -> bool:
        """More than half of the interval's pushes were staler than `bound` (and dropped)."""
        return bool(self.staleness) and sum(s > bound for s in self.staleness) > len(self.staleness) / 2


def _pct(values: list[int], q: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)])

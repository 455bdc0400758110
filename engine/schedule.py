"""The learning-rate schedule: the LR as a function of the PS's global update count.

The clock is the number of samples the PS has applied, in units of one batch (so one update of
the single process, or one push of an async worker, advances it by one). Async and single runs
therefore follow the same curve per sample seen, however the updates are spread over workers.
"""

from __future__ import annotations

import math

from .config import RunConfig, Settings, parse_warmup


class LRSchedule:
    """Linear warmup to `config.lr`, then constant, cosine to zero, or x0.1 steps at 50%/75%."""

    def __init__(self, config: RunConfig | Settings, train_samples: int) -> None:
        self.kind, self.peak = config.lr_schedule, config.lr
        self.total = config.epochs * train_samples / config.batch_size
        if config.max_updates:
            self.total = min(self.total, config.max_updates)
        value, unit = parse_warmup(config.warmup)  # type: ignore[misc]  # validated
        self.warmup = value * train_samples / config.batch_size if unit == "epochs" else value
        self.warmup = min(self.warmup, self.total)

    def __call__(self, update: float) -> float:
        if update < self.warmup:
            return self.peak * (update + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return self.peak
        progress = min(1.0, (update - self.warmup) / max(1.0, self.total - self.warmup))
        if self.kind == "cosine":
            return self.peak * 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak * 0.1 ** ((progress >= 0.5) + (progress >= 0.75))

    def warming_up(self, update: float) -> bool:
        return update < self.warmup

    def describe(self) -> dict[str, float | str]:
        return {"kind": self.kind, "peak": self.peak, "warmup_updates": round(self.warmup, 1),
                "total_updates": round(self.total, 1)}

"""What the parameter server and its workers say to each other, beyond tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Reply:
    """What a worker gets back for a push, a refresh or the end of an epoch."""

    version: int
    params: torch.Tensor | dict[str, torch.Tensor] | None
    stop: bool
    lr: float  # the scheduled LR now (workers with their own optimizer use it)
    step_size: float = 0.0  # the PS rule's step per unit of gradient (`UpdateRule.step_size`)


def worker_names(workers: list[int]) -> str:
    """[0, 1, 2] -> "worker0, worker1 and worker2"."""
    names = [f"worker{w}" for w in workers]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"

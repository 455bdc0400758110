"""Every update rule's name and what the rest of adt needs to know about it, without torch.

The config's choices, `--help`, the preflight's warnings, the worker's side of the exchange and
engine/rules.py (one class per name, checked against this list) all read it, so a new rule is one
line here and one class there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RuleSpec:
    name: str
    summary: str  # one line for --help and the README's table
    worker_sends: str = "gradient"  # or "delta": the worker takes local steps and sends how far it moved
    optimizers: tuple[str, ...] = ("sgd", "adamw")  # the rules built on SGD's momentum buffer: sgd only


RULE_SPECS = (
    RuleSpec("sgd", "the optimizer's step as one process takes it (plain async SGD)"),
    RuleSpec("lr/staleness", "the step divided by the push's staleness"),
    RuleSpec("async-momentum", "the momentum lowered by the momentum that asynchrony adds"),
    RuleSpec("dc-asgd", "delay compensation: g + l*g*g*(w_now - w_sent), on async-momentum"),
    RuleSpec("lookahead", "full momentum; workers compute where it will have carried the model",
             optimizers=("sgd",)),
    RuleSpec("lookahead-damped", "lookahead with the momentum damped for staleness beyond one",
             optimizers=("sgd",)),
    RuleSpec("gap-aware", "each stale gradient divided by how far its parameter moved since"),
    RuleSpec("lookahead-gap-aware", "lookahead, with gap-aware's penalty measured from the lookahead point",
             optimizers=("sgd",)),
    RuleSpec("delayed-nesterov", "gradients at once; the momentum takes each round of N pushes once",
             optimizers=("sgd",)),
    RuleSpec("dana", "a momentum per worker; workers compute where all of them will carry the model",
             optimizers=("sgd",)),
    RuleSpec("dana-gap-aware", "dana, with gap-aware's penalty measured from the point each worker was sent",
             optimizers=("sgd",)),
    RuleSpec("local-sgd", "workers take --local-steps steps and push the delta; the PS steps on it",
             worker_sends="delta"),
)
RULE_NAMES = ("auto", *(spec.name for spec in RULE_SPECS))
_BY_NAME = {spec.name: spec for spec in RULE_SPECS}


def rule_for(workers: int, optimizer: str = "sgd") -> str:
    """The update rule `auto` means for this many workers: the best measured at 2, 4 and 8 workers
    on the GPU (docs/BENCHMARKS.md, Convergence). A function of the count, so that a rule measured
    better at some counts only can take them. AdamW has no momentum buffer to look ahead with."""
    if optimizer != "sgd":
        return "gap-aware"
    return "dana-gap-aware"


def auto_ranges(pick: Callable[[int], str] = rule_for, most: int = 64) -> str:
    """What `auto` picks, by worker count, in words ("lookahead up to 2 workers, dana from 3
    to 5, ..."), read off `rule_for` so that the help text cannot drift from it."""
    ranges: list[list] = []  # [rule, first count, last count]
    for n in range(1, most + 1):
        if ranges and ranges[-1][0] == pick(n):
            ranges[-1][2] = n
        else:
            ranges.append([pick(n), n, n])
    if len(ranges) == 1:
        return f"{ranges[0][0]} at every worker count"
    words = [f"{rule} up to {last} workers" if first == 1 else
             f"{rule} from {first}" if last == most else f"{rule} from {first} to {last}"
             for rule, first, last in ranges]
    return ", ".join(words)


def rule_spec(name: str, workers: int = 2, optimizer: str = "sgd") -> RuleSpec:
    """The spec of a configured rule name (`auto` resolved for this many workers)."""
    return _BY_NAME[rule_for(workers, optimizer) if name == "auto" else name]

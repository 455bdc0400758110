"""Health rules: turn metrics into alerts a person must see (chance accuracy, divergence, ...).

Each check returns a list of (level, code, message) and remembers what it already said, so an
alert fires once per condition rather than on every metric.
"""

from __future__ import annotations

import math

Alert = tuple[str, str, str]


class Health:
    def __init__(self, num_classes: int, warmup_evals: int) -> None:
        self.num_classes = num_classes
        self.warmup_evals = warmup_evals
        self.evals = 0
        self.said: set[str] = set()

    def _once(self, key: str, alert: Alert) -> list[Alert]:
        if key in self.said:
            return []
        self.said.add(key)
        return [alert]

    def diverged(self) -> bool:
        return any(k.startswith(("loss_nan", "val_loss")) for k in self.said)

    def validation(self, loss: float, acc: float, count: int) -> list[Alert]:
        """Chance-level accuracy past warm-up; loss above 3 ln C or not finite."""
        self.evals += 1
        alerts: list[Alert] = []
        chance = 1.0 / self.num_classes
        bound = 3 * math.log(self.num_classes)
        if not math.isfinite(loss):
            alerts += self._once("val_loss_nan", ("error", "val_loss_nan",
                                 f"validation loss is {loss}: the model has diverged"))
        elif loss > bound:
            alerts += self._once("val_loss_high", ("error", "val_loss_high",
                                 f"validation loss {loss:.4g} is above 3 ln C = {bound:.2f}: training is "
                                 "diverging or the labels do not match the data"))
        # Three standard errors of a chance-level classifier on `count` samples.
        noise = 3 * math.sqrt(chance * (1 - chance) / max(count, 1))
        if self.evals > self.warmup_evals and acc <= chance + noise:
            alerts += self._once("chance", ("error", "chance_accuracy",
                                 f"validation accuracy {acc:.2%} is at chance ({chance:.2%}) after "
                                 f"{self.evals} evaluations: check the data (labels, class map, URLs)"))
        return alerts

    def train_loss(self, worker: int, loss: float) -> list[Alert]:
        if math.isfinite(loss):
            return []
        return self._once(f"loss_nan{worker}", ("error", "loss_nan",
                          f"worker {worker} training loss is {loss}: the run has diverged"))

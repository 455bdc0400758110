"""Health rules: turn metrics into alerts a person must see (chance accuracy, divergence, ...).

Each check returns a list of (level, code, message) and remembers what it already said, so an
alert fires once per condition rather than on every metric.

The validation alarms judge from more than one number, so that a run that is learning (whose
validation accuracy may still swing) does not cry wolf:
- evaluations during the LR warmup, and the first `warmup_evals` after it, are not judged;
- chance accuracy fires at once when training shows no learning either (labels shuffled against
  images, a learning rate that goes nowhere); when training does learn, it needs two evaluations
  at chance in a row (validation data that does not match the training data, e.g. another class
  map), since one dip of a learning run is noise;
- a validation loss above 3 ln C fires when it holds for two evaluations in a row, or at once
  when it is far beyond (10x: the "loss in the hundreds of millions" of a wrong-data run).
"""

from __future__ import annotations

import math

from .events import AlertCode

Alert = tuple[str, str, str]


class Health:
    def __init__(self, num_classes: int, warmup_evals: int) -> None:
        self.num_classes = num_classes
        self.warmup_evals = warmup_evals
        self.evals = 0  # judged evaluations (past the LR warmup)
        self.at_chance = self.loss_high = 0  # consecutive evaluations in that state
        self.train: dict[int, tuple[float, float]] = {}  # worker -> latest (loss, acc)
        self.said: set[str] = set()

    def _once(self, key: str, alert: Alert) -> list[Alert]:
        if key in self.said:
            return []
        self.said.add(key)
        return [alert]

    def diverged(self) -> bool:
        return any(k.startswith(("loss_nan", "val_loss")) for k in self.said)

    def training_learns(self) -> bool | None:
        """Whether the workers' latest training metrics are clearly better than chance (None: no data)."""
        if not self.train:
            return None
        loss = sum(loss for loss, _ in self.train.values()) / len(self.train)
        acc = sum(acc for _, acc in self.train.values()) / len(self.train)
        chance = 1.0 / self.num_classes
        return loss < 0.85 * math.log(self.num_classes) or acc > chance + 0.25 * (1 - chance)

    def validation(self, loss: float, acc: float, count: int, warming_up: bool = False) -> list[Alert]:
        """Judge one evaluation of the global model; `warming_up`: the LR is still in its warmup."""
        alerts: list[Alert] = []
        bound = 3 * math.log(self.num_classes)
        if not math.isfinite(loss):
            alerts += self._once("val_loss_nan", ("error", AlertCode.VAL_LOSS_NAN,
                                 f"validation loss is {loss}: the model has diverged"))
        self.loss_high = self.loss_high + 1 if math.isfinite(loss) and loss > bound else 0
        if self.loss_high >= 2 or (self.loss_high and loss > 10 * bound):
            alerts += self._once("val_loss_high", ("error", AlertCode.VAL_LOSS_HIGH,
                                 f"validation loss {loss:.4g} is above 3 ln C = {bound:.2f}: training is "
                                 "diverging or the labels do not match the data"))
        if warming_up:
            return alerts
        self.evals += 1
        chance = 1.0 / self.num_classes
        # Three standard errors of a chance-level classifier on `count` samples.
        noise = 3 * math.sqrt(chance * (1 - chance) / max(count, 1))
        self.at_chance = self.at_chance + 1 if acc <= chance + noise else 0
        if self.evals <= self.warmup_evals or not self.at_chance:
            return alerts
        learns = self.training_learns()
        if learns and self.at_chance >= 2:
            alerts += self._once("chance", ("error", AlertCode.CHANCE_ACCURACY,
                                 f"validation accuracy {acc:.2%} is at chance ({chance:.2%}) for "
                                 f"{self.at_chance} evaluations while training learns: the validation "
                                 "data does not match the training data (labels, class map, URLs)"))
        elif not learns:
            alerts += self._once("chance", ("error", AlertCode.CHANCE_ACCURACY,
                                 f"validation accuracy {acc:.2%} is at chance ({chance:.2%}) after "
                                 f"{self.evals} evaluations and training does not learn either: check "
                                 "the data (labels, class map, URLs) and the learning rate"))
        return alerts

    def train_metrics(self, worker: int, loss: float, acc: float) -> list[Alert]:
        """Remember a worker's latest training metrics; a non-finite loss is divergence."""
        if math.isfinite(loss):
            self.train[worker] = (loss, acc)
            return []
        return self._once(f"loss_nan{worker}", ("error", AlertCode.LOSS_NAN,
                          f"worker {worker} training loss is {loss}: the run has diverged"))

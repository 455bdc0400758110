"""Why async lags: the likely causes a run's own events show, with their evidence and the flag
that addresses each.

`Symptoms` folds the events (fed in file order, like `Curves`) and `findings()` lists what is
wrong now; each finding names its evidence in numbers. `explain` speaks only when the run trails
its `--compare` reference by more than `BEHIND` points at the same samples seen: a healthy run,
or one ahead of its reference, hears nothing (no crying wolf).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.rule_registry import rule_for

from .series import num

if TYPE_CHECKING:  # compare.py drives this module; it only hands a Standing in
    from .compare import Standing

BEHIND = 3.0  # points of validation accuracy behind the reference before the monitor explains
WINDOW = 6  # reports judged together: one interval (an epoch's validation, a barrier) is noise
STALE = 1.5  # staleness p95 beyond this many times (+2) the N-1 that N round-robin workers give,
# and the median push at least N-1: on a busy host the scheduler alone gives 2 healthy workers
# typical p95s of 2 and, now and then, a run of reports with p95s of 4 to 29 (seen under
# stress-ng), while their median push stays at 0 (they run in turns of several pushes); 4 workers
# with --overlap there: medians of 3 to 4, p95s of 4 to 26
DROPPED = 0.05  # a share of pushes dropped by --max-staleness that costs progress
BUSY = 0.8  # the PS's apply thread busy this share of the time: pushes queue behind it
WAITED = 0.5  # workers waiting this share of an epoch at its barrier for the last one: it is slow
GAP = 0.25  # the workers' training accuracy this far above the global model's validation accuracy
WAITED_S = 1.0  # ... and this many seconds: below it, scheduler jitter on a busy host, not a slow worker


@dataclass(frozen=True)
class Finding:
    cause: str  # staleness, warmup, dropped, slow_worker, ps_busy, batchnorm
    evidence: str
    fix: str

    def text(self) -> str:
        return f"{self.cause.replace('_', ' ')}: {self.evidence}. Try {self.fix}"


@dataclass
class Symptoms:
    """What the diagnosis reads from the events, folded as they come."""

    workers: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    warmup_updates: float = 0.0
    ps: dict[str, Any] | None = None  # the latest ps_metrics
    epoch_ends: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=2))  # the latest
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=WINDOW))  # ps_metrics
    rule: str = ""
    train_samples: int = 0
    train_acc: dict[int, float] = field(default_factory=dict)  # each worker's latest, since the validation
    validation: dict[str, Any] | None = None  # the latest
    trained_then: float | None = None  # the workers' mean training accuracy before that validation

    def apply(self, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        if kind == "run_start":
            self.workers, self.config = int(e.get("workers") or 0), e.get("config") or {}
            self.warmup_updates = float((e.get("schedule") or {}).get("warmup_updates") or 0)
            self.rule, self.train_samples = str(e.get("update_rule", "")), int(e.get("train_samples") or 0)
            self.recent.clear()
            self.epoch_ends.clear()
            self.train_acc.clear()
            self.validation = self.trained_then = None
        elif kind == "worker_metrics" and num(e.get("acc")) is not None:
            self.train_acc[int(e.get("worker") or 0)] = num(e.get("acc"))  # type: ignore[assignment]
        elif kind == "validation":
            self.validation = e
            self.trained_then = statistics.mean(self.train_acc.values()) if self.train_acc else None
        elif kind == "ps_metrics":
            self.ps = e
            self.recent.append(e)
        elif kind == "epoch_end":
            self.epoch_ends.append(e)

    def _typical(self, read: Any) -> float | None:
        """The median over the last WINDOW reports of a number each carries; None before the
        window is full."""
        values = [v for v in (num(read(e)) for e in self.recent) if v is not None]
        return statistics.median(values) if len(values) == WINDOW else None

    def findings(self) -> list[Finding]:
        """Every cause the events show now, most specific first."""
        if self.ps is None or self.workers < 1:
            return []
        return [f for f in (self._dropped(), self._warmup(), self._slow_worker(), self._ps_busy(),
                            self._batchnorm(), self._staleness()) if f is not None]

    def _staleness(self) -> Finding | None:
        p50 = self._typical(lambda e: (e.get("staleness") or {}).get("p50"))
        p95 = self._typical(lambda e: (e.get("staleness") or {}).get("p95"))
        top = max(num((e.get("staleness") or {}).get("max")) or 0 for e in self.recent)
        expected = max(1, self.workers - 1)
        allowed = STALE * expected + 2
        if p95 is None or p50 is None or p95 <= allowed or p50 < expected:
            return None
        bound = int(self.config.get("max_staleness") or 0)
        if bound and bound <= allowed:
            return None  # staler pushes are dropped, not applied: that is `dropped`'s finding
        overlap = " and --overlap adds one more" if self.config.get("overlap") else ""
        options = [*self._better_rule(), *(["without --overlap"] if overlap else [])]
        # Asynchrony with staleness t acts like momentum t/(1+t) (Mitliagkas et al. 2016).
        return Finding("staleness", f"pushes are {p50:g} updates stale at the median, {p95:g} at p95 "
                       f"(max {top:g}) with {self.workers} workers, where round-robin gives "
                       f"{expected}{overlap}; under {self.rule}, that acts like extra momentum of about "
                       f"{p95 / (1 + p95):.2f}",
                       f"{', '.join(options)}, or fewer workers" if options else "fewer workers")

    def _better_rule(self) -> list[str]:
        """The rule measured best for this many workers, unless the run has it already."""
        best = rule_for(self.workers)
        return [] if self.rule == best else [f"--update-rule {best}"]

    def _warmup(self) -> Finding | None:
        """A warmup still under way after the first epoch: longer than the default's one epoch,
        the LR is still below what a reference run trains at by now."""
        samples = num(self.ps.get("samples_seen")) or 0.0  # type: ignore[union-attr]
        done = samples / float(self.config.get("batch_size") or 1)
        if done >= self.warmup_updates or samples <= self.train_samples:
            return None
        return Finding("warmup", f"the learning rate is still warming up ({num(self.ps.get('lr')) or 0:.3g} "  # type: ignore[union-attr]
                       f"of {self.config.get('lr')}: {done:.0f} of {self.warmup_updates:.0f} updates)",
                       f"a shorter --warmup (now {self.config.get('warmup')})")

    def _dropped(self) -> Finding | None:
        dropped, version = num(self.ps.get("dropped")) or 0, num(self.ps.get("version")) or 0  # type: ignore[union-attr]
        if not dropped or dropped < DROPPED * (dropped + version):
            return None
        bound = self.config.get("max_staleness")
        return Finding("dropped", f"{dropped:.0f} of {dropped + version:.0f} pushes were dropped as staler "
                       f"than --max-staleness {bound}: their samples taught the model nothing",
                       " with ".join(["a larger --max-staleness (or 0, no bound)", *self._better_rule()]))

    def _slow_worker(self) -> Finding | None:
        """At the last two epochs' barriers the others waited most of each epoch for the same
        worker (a busy host delays one worker now and another then; a slow one, always). The
        first epoch is not judged: it counts from the first worker's join, so a late start shows
        there as slowness."""
        found = [waited for waited in map(_waited_for, self.epoch_ends) if waited is not None]
        if len(found) < 2 or found[0][0] != found[1][0]:
            return None
        slowest, longest, seconds = found[-1]
        e = self.epoch_ends[-1]
        return Finding("slow_worker", f"at the end of epoch {e.get('epoch', 0) + 1} the other workers waited up "
                       f"to {longest:.1f} s of its {seconds:.1f} s for worker {slowest}: its pushes come "
                       "rarely and stale", "--mps if workers share a GPU, even shards (adt data prepare "
                       "--workers N), or a look at that worker's host and log")

    def _batchnorm(self) -> Finding | None:
        """The workers train (in train mode: batch statistics) far better than the global model
        validates (eval mode: the running statistics the PS holds): those do not fit its weights."""
        if self.validation is None or self.trained_then is None:
            return None
        val = num(self.validation.get("acc")) or 0.0
        if self.trained_then - val < GAP:
            return None
        recompute = int(self.config.get("bn_recompute") or 0)
        held = ("the mean of the workers' running statistics (--bn-recompute 0)" if not recompute
                else f"statistics recomputed on {recompute} training samples")
        return Finding("batchnorm", f"the workers train at {self.trained_then:.0%} accuracy while the global model "
                       f"validates at {val:.0%} with {held}: BatchNorm statistics that do not fit its "
                       "weights (or a model that overfits)",
                       "--bn-recompute 2048" if not recompute else f"a larger --bn-recompute (now {recompute})")

    def _ps_busy(self) -> Finding | None:
        busy = self._typical(lambda e: e.get("busy"))
        if busy is None or busy < BUSY:
            return None
        rate = self._typical(lambda e: e.get("updates_per_s")) or 0.0
        apply_ms = self._typical(lambda e: e.get("apply_ms") or 0.0) or 0.0
        return Finding("ps_busy", f"the PS worked {busy:.0%} of the time over the last {WINDOW} reports "
                       f"({rate * apply_ms / 1000:.0%} applying {rate:g} updates/s, the rest validating, "
                       "BatchNorm passes and checkpoints): pushes wait in its queue and grow stale there",
                       "a larger --eval-every, --ps-device cuda (a GPU of its own), --transfer-dtype bf16, "
                       "or fewer workers")


@dataclass(frozen=True)
class Explanation:
    cause: str  # the Finding's: a front end says each new cause once
    text: str


def _waited_for(e: dict[str, Any]) -> tuple[int, float, float] | None:
    """(the worker the others waited for, their longest wait, the epoch's seconds) when they
    waited WAITED of an epoch after the first, and WAITED_S, or more."""
    waits, seconds = {int(w): float(s) for w, s in (e.get("waits") or {}).items()}, num(e.get("seconds"))
    if not e.get("epoch") or len(waits) < 2 or not seconds or max(waits.values()) < max(WAITED * seconds, WAITED_S):
        return None
    return min(waits, key=waits.__getitem__), max(waits.values()), seconds


def explain(standing: Standing | None, symptoms: Symptoms) -> Explanation | None:
    """When the run trails its reference by more than BEHIND points: by how much, and the likely
    cause with its evidence (None otherwise, or when no cause shows)."""
    if standing is None or standing.points > -BEHIND:
        return None
    found = symptoms.findings()
    if not found:
        return None
    return Explanation(found[0].cause, f"{-standing.points:.1f} points behind {standing.reference} at "
                       f"{standing.samples:,.0f} samples; likely {found[0].text()}")

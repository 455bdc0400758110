"""Update rules and the LR schedule on their own: each rule's step against one computed by hand,
each rule's state through a checkpoint round trip, the worker's side of `--overlap` against a real
PS in this process, and the schedule's curve."""

from __future__ import annotations

import io
import math
import os
import socket

import pytest
import torch
from torch import nn

from engine.config import ConfigError, RunConfig
from engine.data import resolve_data
from engine.events import EventWriter
from engine.models import build_model
from engine.rules import RULES, make_rule
from engine.schedule import LRSchedule
from engine.server import FlatModel, ParameterServer
from engine.worker import Exchange

from .conftest import tiny_config


def rule_on(name: str, params: list[float], **overrides):
    """The rule `name` over a 1-layer model whose parameters are `params`."""
    model = nn.Linear(len(params), 1, bias=False)
    flat = FlatModel(model)
    flat.params.copy_(torch.tensor(params))
    config = RunConfig(**{"update_rule": name, "weight_decay": 0.0, "momentum": 0.9, **overrides}).validate()
    return flat, make_rule(config, flat.params, flat.grads, model, single=False)


def push(flat: FlatModel, rule, grad: list[float], worker: int = 0, staleness: int = 0,
         base: int = 0, lr: float = 0.1) -> list[float]:
    flat.grads.copy_(torch.tensor(grad))
    rule.apply(worker, staleness, base, lr)
    return flat.params.tolist()


def close(a: list[float], b: list[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7) for x, y in zip(a, b, strict=True))


def test_sgd_takes_the_optimizer_step_at_the_scheduled_lr():
    flat, rule = rule_on("sgd", [1.0, 2.0])
    assert close(push(flat, rule, [0.5, -1.0], lr=0.1), [0.95, 2.1])
    # momentum 0.9: buffer = 0.9 * g1 + g2 = [0.45 + 1, -0.9 + 0] = [1.45, -0.9]
    assert close(push(flat, rule, [1.0, 0.0], lr=0.2), [0.95 - 0.29, 2.1 + 0.18])


def test_lr_over_staleness_divides_the_step():
    flat, rule = rule_on("lr/staleness", [1.0, 2.0])
    assert close(push(flat, rule, [0.5, -1.0], staleness=4, lr=0.4), [0.95, 2.1])
    flat, rule = rule_on("lr/staleness", [1.0, 2.0])
    assert close(push(flat, rule, [0.5, -1.0], staleness=0, lr=0.1), [0.95, 2.1])  # fresh: full step


def test_async_momentum_lowers_explicit_momentum_by_the_staleness_share():
    flat, rule = rule_on("async-momentum", [0.0])
    push(flat, rule, [1.0], staleness=3, lr=0.1)  # buffer = g = 1; params -0.1
    # mean staleness 3 -> implicit momentum 3/4: explicit 0.9 - 0.75 = 0.15; buffer 0.15 + 1
    assert close(push(flat, rule, [1.0], staleness=3, lr=0.1), [-0.1 - 0.115])
    assert rule.metrics() == {"mean_staleness": 3.0, "momentum": 0.15}
    flat, rule = rule_on("async-momentum", [0.0])
    push(flat, rule, [1.0], staleness=9, lr=0.1)
    assert rule.metrics()["momentum"] == 0.0  # never below zero


def test_dc_asgd_compensates_the_drift_since_the_parameters_were_sent():
    flat, rule = rule_on("dc-asgd", [1.0, 1.0], dc_lambda=2.0)
    rule.sent(0, 0)  # worker 0 got the parameters [1, 1] at version 0
    flat.params.copy_(torch.tensor([1.5, 0.0]))  # then another worker's push moved them
    g = torch.tensor([0.2, -0.4])
    mean_square = 0.05 * g * g  # first update of the running mean square (decay 0.95)
    drift = torch.tensor([0.5, -1.0])
    compensated = g + 2.0 * g * g * drift / (mean_square.sqrt() + 1e-7)
    expected = torch.tensor([1.5, 0.0]) - 0.1 * compensated  # staleness 1: explicit momentum 0.4
    assert close(push(flat, rule, g.tolist(), staleness=1, base=0, lr=0.1), expected.tolist())
    assert rule.sent_params.snapshots[0] == {}  # a snapshot is dropped once its push arrived


def test_dc_asgd_fresh_push_is_plain_sgd():
    flat, rule = rule_on("dc-asgd", [1.0, 2.0])
    rule.sent(0, 0)
    assert close(push(flat, rule, [0.5, -1.0], staleness=0, base=0, lr=0.1), [0.95, 2.1])


def test_lookahead_sends_where_the_momentum_will_carry_the_model():
    flat, rule = rule_on("lookahead", [1.0, 2.0])
    assert rule.outgoing() is flat.params  # no momentum yet: the parameters as they are
    assert close(push(flat, rule, [1.0, -2.0], staleness=3, lr=0.1), [0.9, 2.2])  # full momentum step
    reach = 0.9 + 0.9 ** 2 + 0.9 ** 3  # mean staleness 3
    assert close(rule.outgoing().tolist(), [0.9 - 0.1 * reach, 2.2 + 0.2 * reach])
    assert close(flat.params.tolist(), [0.9, 2.2])  # the global model itself is not moved


def test_lookahead_damped_lowers_momentum_by_the_staleness_beyond_one():
    flat, rule = rule_on("lookahead-damped", [0.0])
    push(flat, rule, [1.0], staleness=3, lr=0.1)  # buffer 1; params -0.1
    # mean staleness 3: momentum 0.9 - (3 - 1) / (3 + 1) = 0.4; buffer 0.4 + 1 = 1.4
    assert close(push(flat, rule, [1.0], staleness=3, lr=0.1), [-0.24])
    reach = 0.4 + 0.4 ** 2 + 0.4 ** 3
    assert close(rule.outgoing().tolist(), [-0.24 - 0.1 * reach * 1.4])
    assert rule.metrics() == {"mean_staleness": 3.0, "momentum": 0.4}
    flat, rule = rule_on("lookahead-damped", [0.0])
    push(flat, rule, [1.0], staleness=1, lr=0.1)
    assert rule.momentum() == 0.9  # one update of staleness: lookahead covers it, full momentum


def test_lookahead_needs_sgd_momentum():
    with pytest.raises(ConfigError, match="lookahead"):
        RunConfig(update_rule="lookahead", optimizer="adamw").validate()


def test_gap_aware_divides_each_coordinate_by_its_gap_in_typical_steps():
    flat, rule = rule_on("gap-aware", [0.0, 0.0])
    rule.sent(0, 0)
    rule.sent(1, 0)  # both workers got [0, 0]
    assert close(push(flat, rule, [1.0, 1.0], worker=0, staleness=0, base=0, lr=0.1), [-0.1, -0.1])
    # the typical update is now 0.1 in each coordinate; other pushes move coordinate 0 by 0.3 more
    flat.params.copy_(torch.tensor([-0.4, -0.1]))
    # worker 1's gradient: gap [0.4, 0.1] = [4, 1] typical steps -> g / [4, 1] = [0.25, 1]
    # momentum buffer 0.9 * [1, 1] + [0.25, 1] = [1.15, 1.9]
    assert close(push(flat, rule, [1.0, 1.0], worker=1, staleness=3, base=0, lr=0.1), [-0.515, -0.29])
    assert rule.metrics() == {"gap_penalty": 2.5}


def test_lookahead_gap_aware_measures_the_gap_from_the_point_the_worker_computed_at():
    flat, rule = rule_on("lookahead-gap-aware", [0.0, 0.0])
    rule.sent(0, 0)
    assert close(push(flat, rule, [1.0, 1.0], worker=0, staleness=0, base=0, lr=0.1), [-0.1, -0.1])
    rule.sent(1, 1, torch.tensor([-0.5, -0.1]))  # the lookahead point worker 1 was sent
    # gap to the parameters now, [-0.1, -0.1]: [0.4, 0] -> penalty [4, 1]; full momentum 0.9
    assert close(push(flat, rule, [1.0, 1.0], worker=1, staleness=1, base=1, lr=0.1),
                 [-0.1 - 0.1 * (0.9 + 0.25), -0.1 - 0.1 * (0.9 + 1.0)])


def test_delayed_nesterov_updates_the_momentum_once_per_round_of_pushes():
    flat, rule = rule_on("delayed-nesterov", [0.0], workers=2)
    # two workers: the momentum's decay per round 0.9^2 = 0.81, and its weight per push
    # c * 0.81 = (0.9 / 0.1) * (1 - 0.81) = 1.71, so a steady gradient moves 1 + 1.71 / 0.19 = 10x
    assert close(push(flat, rule, [1.0], lr=0.1), [-0.1])  # mid-round: the gradient alone
    assert close(push(flat, rule, [1.0], lr=0.1), [-0.1 - 0.1 * (1 + 1.71 * 1.0)])  # m = mean = 1
    assert close(push(flat, rule, [0.0], lr=0.1), [-0.371 - 0.1 * 1.71])  # m unchanged mid-round


def test_delayed_nesterov_with_one_worker_is_nesterov_sgd():
    flat, rule = rule_on("delayed-nesterov", [1.0, -2.0], workers=1, weight_decay=0.01)
    reference = nn.Parameter(torch.tensor([1.0, -2.0]))
    sgd = torch.optim.SGD([reference], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for grad in ([0.5, -1.0], [0.2, 0.3], [-0.4, 0.1]):
        reference.grad = torch.tensor(grad)
        sgd.step()
        assert close(push(flat, rule, grad, lr=0.1), reference.tolist())


def test_dana_keeps_a_momentum_per_worker_and_sends_where_all_of_them_carry_the_model():
    flat, rule = rule_on("dana", [0.0], workers=2)
    assert close(push(flat, rule, [1.0], worker=0, lr=0.1), [-0.1])  # v0 = 1
    assert close(push(flat, rule, [1.0], worker=1, lr=0.1), [-0.2])  # v1 = 1: worker 0's momentum untouched
    assert close(push(flat, rule, [1.0], worker=0, lr=0.1), [-0.39])  # v0 = 0.9 * 1 + 1 = 1.9
    # sent: the parameters less lr * momentum * (v0 + v1) = -0.39 - 0.1 * 0.9 * 2.9
    assert close(rule.outgoing().tolist(), [-0.651])
    rule.gone(1)  # worker 1 left: its momentum will not be applied, so no one is sent its share
    assert close(rule.outgoing().tolist(), [-0.39 - 0.1 * 0.9 * 1.9])
    assert sorted(rule.state_dict()["buffers"]) == [0, 1]  # a checkpoint keeps it for a resume
    assert close(push(flat, rule, [0.0], worker=1, lr=0.1), [-0.39 - 0.09])  # back: v1 = 0.9
    assert close(rule.outgoing().tolist(), [-0.48 - 0.1 * 0.9 * (1.9 + 0.9)])


def test_dana_steps_a_round_at_most_four_times_one_process():
    flat, rule = rule_on("dana", [0.0], workers=8, weight_decay=0.5)
    # 8 workers: each push at half the scheduled LR; weight decay joins the gradient first
    assert close(push(flat, rule, [1.0], lr=0.1), [-0.05])
    assert close(push(flat, rule, [0.0], worker=1, lr=0.1), [-0.05 - 0.05 * 0.5 * -0.05])


def test_dana_gap_aware_takes_the_full_lr_at_any_worker_count():
    # its penalty, not a cap, shrinks a round that overshoots
    for workers in (8, 16):
        flat, rule = rule_on("dana-gap-aware", [0.0], workers=workers)
        assert close(push(flat, rule, [1.0], lr=0.1), [-0.1])


def test_dana_gap_aware_penalises_the_gradient_then_steps_its_own_workers_momentum():
    flat, rule = rule_on("dana-gap-aware", [0.0, 0.0], workers=2)
    rule.sent(0, 0)
    assert close(push(flat, rule, [1.0, 1.0], worker=0, lr=0.1), [-0.1, -0.1])  # v0 = [1, 1]
    rule.sent(1, 1, torch.tensor([-0.5, -0.1]))  # the point worker 1 was sent
    # gap to the parameters now, [-0.1, -0.1]: [0.4, 0] = [4, 1] typical steps -> g = [0.25, 1];
    # worker 1's own momentum starts at that, worker 0's is not applied again
    assert close(push(flat, rule, [1.0, 1.0], worker=1, staleness=1, base=1, lr=0.1), [-0.125, -0.2])
    assert close(rule.outgoing().tolist(), [-0.125 - 0.1 * 0.9 * 1.25, -0.2 - 0.1 * 0.9 * 2.0])


def test_dana_with_overlap_sends_where_two_rounds_of_momentum_carry_the_model():
    # --overlap: a gradient lands two rounds after its worker was sent the parameters
    flat, rule = rule_on("dana", [0.0], workers=2, overlap=True)
    assert close(push(flat, rule, [1.0], worker=0, lr=0.1), [-0.1])  # v0 = 1
    assert close(rule.outgoing().tolist(), [-0.1 - 0.1 * (0.9 + 0.81) * 1.0])
    flat, rule = rule_on("dana", [0.0], workers=2, overlap=True, transport="plain")  # no overlap there
    push(flat, rule, [1.0], worker=0, lr=0.1)
    assert close(rule.outgoing().tolist(), [-0.1 - 0.1 * 0.9 * 1.0])


def test_step_size_is_how_far_a_unit_gradient_moves_the_model():
    assert rule_on("lookahead-gap-aware", [0.0], workers=8)[1].step_size(0.1) == 0.1
    # the push, then its share of its worker's next (Nesterov) step; dana's round is capped at 4x
    assert math.isclose(rule_on("dana-gap-aware", [0.0], workers=8)[1].step_size(0.1), 0.1 * 1.9)
    assert math.isclose(rule_on("dana", [0.0], workers=8)[1].step_size(0.1), 0.05 * 1.9)
    assert rule_on("gap-aware", [0.0], optimizer="adamw")[1].step_size(0.1) == 0.0  # no single factor


def test_local_sgd_takes_an_outer_step_on_the_delta():
    flat, rule = rule_on("local-sgd", [1.0, 2.0], outer_lr=0.5)
    assert close(push(flat, rule, [0.4, -0.2], lr=123.0), [0.8, 2.1])  # the scheduled LR is the workers'
    flat, rule = rule_on("local-sgd", [1.0], outer_lr=1.0, outer_momentum=0.5)
    # Nesterov, first step: buffer = d; update = d + 0.5 * buffer = 1.5 d
    assert close(push(flat, rule, [0.2]), [1.0 - 0.3])


def test_local_sgd_by_default_moves_the_model_by_the_mean_of_a_round_of_deltas():
    flat, rule = rule_on("local-sgd", [1.0], workers=4)
    assert close(push(flat, rule, [0.4]), [0.9])  # outer lr 1/4
    assert RunConfig().local_steps == 8


def test_one_process_always_takes_plain_steps():
    model = nn.Linear(2, 1, bias=False)
    flat = FlatModel(model)
    config = RunConfig(update_rule="local-sgd").validate()
    assert make_rule(config, flat.params, flat.grads, model, single=True).name == "sgd"


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_state_survives_a_checkpoint(name):
    """Two rules take the same pushes; one goes through torch.save / torch.load(weights_only=True)
    halfway. Both then end with the same parameters and the same state."""
    pushes = [([0.3, -0.1], 2), ([0.1, 0.4], 1), ([-0.2, 0.2], 3), ([0.5, 0.0], 2)]
    a_flat, a = rule_on(name, [1.0, 2.0])
    b_flat, b = rule_on(name, [1.0, 2.0])
    for version, (grad, staleness) in enumerate(pushes[:2]):
        for flat, rule in ((a_flat, a), (b_flat, b)):
            rule.sent(0, version)
            push(flat, rule, grad, staleness=staleness, base=version)
    buffer = io.BytesIO()
    torch.save({"model": b_flat.params.clone(), "rule": b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    b_flat, b = rule_on(name, [0.0, 0.0])
    b_flat.params.copy_(saved["model"])
    b.load_state_dict(saved["rule"])
    for version, (grad, staleness) in enumerate(pushes[2:], start=2):
        for flat, rule in ((a_flat, a), (b_flat, b)):
            rule.sent(0, version)
            push(flat, rule, grad, staleness=staleness, base=version)
    assert close(a_flat.params.tolist(), b_flat.params.tolist())
    assert close(a.outgoing().tolist(), b.outgoing().tolist())  # what the next worker is sent
    assert a.metrics() == b.metrics()


# --- the worker's side of --overlap, against the real PS in this process ------------------------
class PSInProcess:
    """A worker's calls to a PS in this process, with replies as over RPC (parameters copied)."""

    shares_model = False

    def __init__(self, server: ParameterServer) -> None:
        self.server = server

    def push_async(self, base_version, grads, buffers, samples, metrics):
        return self.server.push(0, base_version, grads, buffers, samples, metrics)

    def wait(self, future):
        return future.wait()


@pytest.mark.parametrize("overlap", [True, False])
def test_with_overlap_a_worker_steps_by_its_push_in_flight_as_the_ps_will(overlap, tiny_data, tmp_path):
    """With --overlap the next gradient is computed before the reply to the push in flight comes:
    the worker takes that push's step itself, so it computes where the PS's model will be."""
    config = tiny_config(tiny_data, tmp_path, update_rule="sgd", momentum=0.0, weight_decay=0.0,
                         lr_schedule="constant", warmup="0", overlap=overlap)
    events = EventWriter(tmp_path / "events.jsonl", "r")
    server = ParameterServer(config, resolve_data(config.data, "", ""), events, 1, torch.device("cpu"),
                             tmp_path / "ck", {"code": {"fingerprint": "f"}})
    try:
        server.register(0, {"pid": os.getpid(), "host": socket.gethostname(), "code_fingerprint": "f"}).wait()
        flat = FlatModel(build_model("cnn", 4))
        exchange = Exchange(PSInProcess(server), flat, config, 0, config.lr)
        exchange.load(server.refresh(0).wait())
        for _ in range(3):
            flat.grads.copy_(torch.randn_like(flat.grads))
            exchange.step(16, None)
            if overlap:
                exchange.pending.wait()  # applied on the PS; its reply not loaded yet
            ps_params = server.call(lambda: server.flat.params.clone())
            assert torch.allclose(flat.params, ps_params, atol=1e-6)
        assert exchange.step_size == config.lr  # the PS rule's, sent with each reply
    finally:
        server.close()
        events.close()


# --- the schedule ------------------------------------------------------------------------------
def schedule(**overrides) -> LRSchedule:
    values = dict(lr=0.4, epochs=10, batch_size=100, warmup="1ep", lr_schedule="cosine")
    return LRSchedule(RunConfig(**{**values, **overrides}).validate(), train_samples=1000)


def test_cosine_schedule_peaks_at_warmup_end_and_reaches_zero_at_the_last_update():
    lr = schedule()  # 10 updates per epoch, 100 in all, 10 of warmup
    assert lr.warmup == 10 and lr.total == 100
    assert lr(0) == pytest.approx(0.4 / 11) and lr.warming_up(9.9)
    assert lr(10) == pytest.approx(0.4) and not lr.warming_up(10)
    assert lr(55) == pytest.approx(0.2)  # halfway through the cosine
    assert lr(100) == pytest.approx(0.0, abs=1e-12)
    assert all(lr(u) >= lr(u + 1) for u in range(10, 100))


def test_warmup_in_updates_and_the_other_shapes():
    assert schedule(warmup="20").warmup == 20
    assert schedule(warmup="0")(0) == pytest.approx(0.4)
    step = schedule(lr_schedule="step", warmup="0")
    assert [step(u) for u in (0, 49, 50, 75, 99)] == pytest.approx([0.4, 0.4, 0.04, 0.004, 0.004])
    assert schedule(lr_schedule="constant")(99) == pytest.approx(0.4)
    assert schedule(max_updates=50).total == 50  # a fixed budget ends the curve there


def test_auto_picks_the_rule_measured_best_for_the_worker_count():
    from engine.config import update_rule_of
    from engine.rule_registry import auto_ranges, rule_for

    assert [rule_for(n) for n in (1, 2, 4, 8, 64)] == ["dana-gap-aware"] * 5
    assert auto_ranges() == "dana-gap-aware at every worker count"  # --help's
    by_count = lambda n: "lookahead" if n <= 2 else "dana" if n < 6 else "gap-aware"  # noqa: E731
    assert auto_ranges(by_count) == "lookahead up to 2 workers, dana from 3 to 5, gap-aware from 6"
    assert rule_for(4, "adamw") == "gap-aware"  # no momentum buffer to look ahead with
    assert update_rule_of(RunConfig(workers=8).validate()) == "dana-gap-aware"
    assert update_rule_of(RunConfig(workers=4, update_rule="sgd").validate()) == "sgd"
    assert RunConfig(workers=4, optimizer="adamw").validate().update_rule == "auto"  # accepted

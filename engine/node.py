"""One process of a job: `python -m engine.node --role ps|worker|single --run-dir DIR`.

Rank and world size come from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as set by adt's supervisor
or by torchrun: rank 0 is the parameter server (or the single process when WORLD_SIZE is 1),
rank k > 0 is worker k-1. SIGINT/SIGTERM while a process starts end it at once; once training
is under way they ask for a graceful stop: workers finish their step and leave, the PS writes a
final checkpoint and `run_end`, and every process exits (engine/stopping.py). No process waits for
the others longer than --join-timeout to form the job.

Exit codes: 0 finished or stopped on request, 1 failed, 2 bad input (config, data, checkpoint).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Nothing here loads torch: main() installs the stop handlers first (engine/stopping.py).
from .config import ConfigError, RunConfig
from .errors import CheckpointError, DataError, JoinTimeout
from .events import AlertCode, EventWriter, ExitCode
from .fingerprint import cover, startup_fingerprint
from .rundir import RunDir, checkpoint_path
from .sources import job_sources
from .stopping import StopRequested, StopSignals

if TYPE_CHECKING:
    from .data import DataSpec



def _log(role: str, message: str) -> None:
    print(f"[adt {role} pid {os.getpid()}] {message}", flush=True)


def _compatible_checkpoint(config: RunConfig, data_fingerprint: str,
                           model_shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Load the resume checkpoint; refuse one of other data or another model shape (unless --force)."""
    from .checkpoint import load_checkpoint

    path = checkpoint_path(config.checkpoints_dir, config.resume)
    payload = load_checkpoint(path)
    old = payload.get("meta", {})
    shapes = {k: list(v.shape) for k, v in payload["model"].items()}
    if shapes != model_shapes:  # no --force: weights of another shape cannot be loaded at all
        raise CheckpointError(f"refusing to resume from {path}: its model has other parameter shapes "
                              "(another model or class count). Fix: resume with the model and data "
                              "it was trained with, or start a fresh run.")
    if old.get("data_fingerprint") != data_fingerprint and not config.force:
        raise CheckpointError(f"refusing to resume from {path}: its data fingerprint "
                              f"{old.get('data_fingerprint')} differs from this data's {data_fingerprint}. "
                              "Fix: resume with the same data, or pass --force to train on this data.")
    return payload


def check_resume(config: RunConfig, spec: DataSpec) -> None:
    """Before any process starts: raise CheckpointError if `--resume` would be refused."""
    if not config.resume:
        return
    from .models import build_for

    model = build_for(config, config.num_classes or len(spec.classes), spec.image_size)
    _compatible_checkpoint(config, spec.fingerprint(),
                           {k: list(v.shape) for k, v in model.state_dict().items()})


def load_resume(config: RunConfig, meta: dict[str, Any], model_shapes: dict[str, list[int]],
                events: EventWriter) -> dict[str, Any] | None:
    """The checkpoint to resume from, after refusing one of other data or another model shape."""
    if not config.resume:
        return None
    payload = _compatible_checkpoint(config, meta["data_fingerprint"], model_shapes)
    old = payload.get("meta", {})
    if old.get("code", {}).get("fingerprint") != meta["code"]["fingerprint"]:
        events.emit("alert", level="warning", code=AlertCode.STALE_CODE,
                    message=f"resuming with changed code: checkpoint has code "
                            f"{old.get('code', {}).get('fingerprint')}, now {meta['code']['fingerprint']}")
    return payload


def run_server(config: RunConfig, run_dir: Path, world_size: int, host: str, port: int,
               signals: StopSignals, parent: int | None = None) -> int:
    """The PS (world_size > 1) or the single process (world_size == 1)."""

    from . import transport
    from .data import resolve_data
    from .placement import device_for
    from .server import ParameterServer
    from .worker import run_worker

    single = world_size == 1
    role = "single" if single else "ps"
    spec = resolve_data(config.data, config.train_url, config.val_url)
    if config.num_classes and config.num_classes != len(spec.classes):
        raise DataError(f"num_classes is {config.num_classes} but {spec.train.manifest_path} lists "
                        f"{len(spec.classes)} classes. Fix: drop --num-classes or use matching data.")
    events = EventWriter(RunDir(run_dir).events, config.run_id)
    cover(job_sources(config))  # the user's model, TOML and --watch paths join adt's code
    checkpoint_dir = Path(config.checkpoints_dir).resolve() / config.run_id
    meta = {"run_id": config.run_id, "code": startup_fingerprint(), "data_fingerprint": spec.fingerprint(),
            "data": spec.describe(), "started": time.time()}
    device = device_for(config.device if single else config.ps_device)
    from .models import build_for

    shapes = {k: list(v.shape) for k, v in build_for(config, len(spec.classes), spec.image_size).state_dict().items()}
    resume = load_resume(config, meta, shapes, events)
    server = ParameterServer(config, spec, events, max(1, world_size - 1), device, checkpoint_dir, meta,
                             resume, single=single)
    events.emit("run_start", config=config.to_dict(), host=socket.gethostname(), pid=os.getpid(),
                mode="single" if single else "async", workers=config.workers, model=config.model,
                num_classes=len(spec.classes), train_samples=spec.train.num_samples,
                val_samples=spec.val.num_samples, data=spec.describe(), code=meta["code"],
                resumed=resume is not None, version=server.version, epoch=server.epoch,
                update_rule=server.rule.name, schedule=server.schedule.describe(),
                checkpoint_dir=str(checkpoint_dir), device=str(device))
    if server.resume_note:
        events.emit("alert", level="warning", code=AlertCode.RULE_CHANGED, message=f"resumed with {server.resume_note}")
    _log(role, f"run {config.run_id}: {config.model}, data {spec.train.urls[0]}..., "
               f"version {server.version}, epoch {server.epoch}")
    failure: list[BaseException] = []
    stop = signals.stop
    join_by: float | None = None  # until then the PS waits for workers in the group to register
    if single:
        client = transport.LocalClient(server)

        def train() -> None:
            try:
                reason = run_worker(client, config, spec.train, 0, 1, 0, stop, model=server.flat)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)
                reason = "failed"
            client.leave(reason)

        threading.Thread(target=train, name="single-train", daemon=True).start()
    else:
        transport.serve(server)
        _log(role, f"waiting up to {config.join_timeout:g}s (--join-timeout) for {world_size - 1} "
                   f"workers to join at {host}:{port}")
        try:
            transport.init(0, world_size, host, port, config.join_timeout, config, parent)
        except RuntimeError as exc:  # JoinTimeout, or torch's own error: the job never formed
            _end_before_training(role, events, server, str(exc) if isinstance(exc, JoinTimeout)
                                 else f"RPC did not start: {_reason(exc)}")
        join_by = time.monotonic() + config.join_timeout
    signals.running(config.grace_period)
    deadline = None
    try:
        while not server.all_left.wait(config.log_interval):
            server.call(lambda: server.report(config.log_interval))
            if join_by is not None and time.monotonic() > join_by:
                join_by = None  # workers in the group that never registered: counted out now
                server.call(lambda: server.count_out_unregistered(config.join_timeout))
            if stop.is_set() and deadline is None:
                server.stop_requested.set()
                deadline = time.monotonic() + config.grace_period * 0.6
                _log(role, "stop requested: waiting for workers to leave")
            if deadline is not None and time.monotonic() > deadline:
                _log(role, "workers did not leave in time; finishing without them")
                break
        server.call(lambda: server.report(config.log_interval))
    except DataError as exc:  # the PS's own reads (validation, BatchNorm) failed: the run cannot go on
        failure.append(exc)
    outcome, message = _outcome(server, config, stop, failure)
    try:
        server.call(lambda: server.finish(validate=outcome == "finished"))
    except DataError as exc:  # e.g. a shard server gone: the last validation or BatchNorm pass
        _log(role, f"no final validation or checkpoint: {_reason(exc)}")
        outcome = "failed"
        message = f"{message}; no final validation or checkpoint: {_reason(exc)}"
    events.emit("run_end", outcome=outcome, version=server.version, epoch=server.epoch,
                best_val_acc=server.best_val_acc, message=message)
    _log(role, f"run_end: {outcome} ({message}), version {server.version}")
    events.close()
    server.close()
    if not single:
        if failure:  # workers may wait at an epoch's end the failure never closed: they see the PS go
            _exit(ExitCode.FAILED)
        transport.shutdown()
    return ExitCode.OK if outcome in ("finished", "stopped") else ExitCode.FAILED


def _end_before_training(role: str, events: EventWriter, server: Any, message: str) -> None:
    """The job never formed: record why and leave. The thread that joins RPC may still be stuck
    inside torch, so no clean shutdown is possible."""
    _log(role, f"run_end: failed ({message})")
    events.emit("run_end", outcome="failed", version=server.version, epoch=server.epoch,
                best_val_acc=server.best_val_acc, message=message)
    events.close()
    _exit(ExitCode.FAILED)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _outcome(server: Any, config: RunConfig, stop: threading.Event,
             failure: list[BaseException]) -> tuple[str, str]:
    """How the run ended, and one sentence saying why."""
    if failure:
        traceback.print_exception(failure[0])
        return "failed", f"training failed: {_reason(failure[0])}"
    if server.outcome == "finished":
        done = server.epoch >= config.epochs
        return "finished", "all epochs done" if done else f"{server.version} updates done"
    if server.outcome == "diverged":
        return "diverged", "stopped: training diverged"
    if stop.is_set() or server.stop_requested.is_set():
        return "stopped", "stopped on request"
    if server.never_registered:
        return "failed", (f"{server.never_registered} never registered within {config.join_timeout:g}s "
                          "(--join-timeout), and every other worker was lost before the run finished")
    if server.failures:
        return "failed", "every worker was lost before the run finished: " + "; ".join(server.failures)
    return "failed", "every worker was lost before the run finished"


def _reason(exc: BaseException) -> str:
    """An error for people: a loader process's error without the traceback torch wraps it in."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:  # "Caught X in DataLoader worker process 0. ...": last line
        return text.splitlines()[-1]
    return repr(exc)


def run_worker_process(rank: int, world_size: int, host: str, port: int, signals: StopSignals,
                       join_timeout: float, parent: int | None = None) -> int:
    from . import transport
    from .data import Split, worker_shards
    from .datacheck import local_copy_problem
    from .worker import run_worker

    worker = rank - 1
    role = f"worker{worker}"
    _log(role, f"joining the parameter server at {host}:{port} (waits up to {join_timeout:g}s, "
               "--join-timeout)")
    try:
        transport.init(rank, world_size, host, port, join_timeout, parent=parent)
    except RuntimeError as exc:  # JoinTimeout, or torch's own error; the join thread may be stuck
        _log(role, f"{exc if isinstance(exc, JoinTimeout) else _reason(exc)}. Exiting.")
        _exit(ExitCode.FAILED)
    client = transport.RpcClient(worker)
    try:
        job = client.job()
        config = RunConfig.from_dict(job["config"])
        signals.running(config.grace_period)  # from here a stop is graceful: finish the step, leave
        client.ps_timeout = config.worker_timeout
        cover(job_sources(config))  # as the PS does: the same files make the same fingerprint
        train = Split(job["train_urls"], job["train_manifest"], job["train_manifest_path"])
        problem = local_copy_problem(train, worker_shards(train.urls, worker, job["num_workers"],
                                                          config.loader_workers))
        if problem:  # on another machine: never train on other data than the PS validates on
            _log(role, f"refusing to train: {problem}")
            client.register({"rank": rank, "pid": os.getpid(), "host": socket.gethostname(),
                             "data_problem": problem})
            transport.shutdown()
            return ExitCode.BAD_INPUT
        reason = run_worker(client, config, train, worker, job["num_workers"], rank, signals.stop)
        code = ExitCode.OK
    except DataError as exc:  # a shard it cannot read (e.g. its server gone): leave, never hang in RPC
        reason, code = f"failed: {_reason(exc)}", ExitCode.FAILED
    except RuntimeError as exc:
        _log(role, f"lost the parameter server at {host}:{port} ({exc}). Exiting.")
        _exit(ExitCode.FAILED)  # the RPC agent cannot shut down cleanly without its peer
    _log(role, f"leaving: {reason}")
    try:
        client.leave(reason)
    except RuntimeError:
        # The PS may close the moment the last worker has left, before its reply arrives.
        _exit(code)
    transport.shutdown()
    return code


def _run_config(run_dir: str | None) -> RunConfig | None:
    """The job's config from `run_dir`, if this process was given one (workers on other machines
    are not: they get it from the PS)."""
    if not run_dir:
        return None
    return RunConfig.from_dict(RunDir(Path(run_dir)).read_config())


def _stopped_while_starting(role: str, config: RunConfig | None, run_dir: str | None) -> None:
    """A stop before training began: nothing to save. With `config`, say so in the run's events."""
    _log(role, "stopped on request while starting; nothing to save")
    if config is not None and run_dir:
        events = EventWriter(RunDir(Path(run_dir)).events, config.run_id)
        events.emit("run_end", outcome="stopped", version=None, epoch=None, best_val_acc=None,
                    message="stopped on request before training began")
        events.close()
    _exit(ExitCode.OK)  # a thread may be inside torch's rendezvous: leave without waiting for it


def _role_from_env() -> str:
    """This process's name in logs ("ps", "worker0", ...), read without loading torch."""
    rank, world_size = os.environ.get("RANK", ""), os.environ.get("WORLD_SIZE", "")
    if not rank.isdigit():
        return "node"
    return "single" if world_size == "1" else "ps" if rank == "0" else f"worker{int(rank) - 1}"


def main(argv: list[str] | None = None) -> int:
    signals = StopSignals(_role_from_env()).install()  # first: a stop while torch loads ends quietly
    parser = argparse.ArgumentParser(prog="python -m engine.node")
    parser.add_argument("--role", choices=("ps", "worker", "single"))
    parser.add_argument("--run-dir", help="the run directory with config.json (the PS needs it; a "
                        "worker given one takes its --join-timeout from there)")
    parser.add_argument("--supervisor", type=int, help="pid of the process that started this one "
                        "(default: the parent at start); its death while the job forms ends the wait")
    args = parser.parse_args(argv)
    # Given by adt's supervisor: it may die before this line runs (the parent is then already
    # init). Under torchrun, its agent: the parent.
    parent = args.supervisor or os.getppid()
    role, config = "node", None
    try:
        config = _run_config(args.run_dir)
        from .transport import rpc_env  # torch loads here

        rank, world_size, host, port = rpc_env()
        role = "single" if world_size == 1 else "ps" if rank == 0 else "worker"
        if args.role and args.role != role:
            print(f"adt node: --role {args.role} contradicts RANK={rank} WORLD_SIZE={world_size} "
                  f"(that is the {role}). Fix: rank 0 is the PS.", file=sys.stderr)
            return ExitCode.BAD_INPUT
        startup_fingerprint()  # before anything else runs: this is the code this process loaded
        if role == "worker":
            join_timeout = (config or RunConfig()).join_timeout
            return run_worker_process(rank, world_size, host, port, signals, join_timeout, parent)
        if config is None:
            print("adt node: the PS needs --run-dir DIR holding config.json.", file=sys.stderr)
            return ExitCode.BAD_INPUT
        return run_server(config.validate(), Path(args.run_dir), world_size, host, port, signals,
                          parent)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"adt {role}: {exc}", file=sys.stderr, flush=True)
        return ExitCode.BAD_INPUT
    except StopRequested:
        writer = os.environ.get("RANK") == "0"  # the PS or the single process writes the events
        _stopped_while_starting(signals.role, config if writer else None, args.run_dir)
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())

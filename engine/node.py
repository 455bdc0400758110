"""One process of a job: `python -m engine.node --role ps|worker|single --run-dir DIR`.

Rank and world size come from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, as set by adt's supervisor
or by torchrun: rank 0 is the parameter server (or the single process when WORLD_SIZE is 1),
rank k > 0 is worker k-1. SIGINT/SIGTERM ask for a graceful stop: workers finish their step and
leave, the PS writes a final checkpoint and `run_end`, and every process exits.

Exit codes: 0 finished or stopped on request, 1 failed, 2 bad input (config, data, checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, RunConfig
from .data import DataError, DataSpec, Split, resolve_data, worker_shards
from .datacheck import local_copy_problem
from .events import EventWriter
from .fingerprint import cover, startup_fingerprint
from .sources import job_sources

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _log(role: str, message: str) -> None:
    print(f"[adt {role} pid {os.getpid()}] {message}", flush=True)


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _compatible_checkpoint(config: RunConfig, data_fingerprint: str,
                           model_shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Load the resume checkpoint; refuse one of other data or another model shape (unless --force)."""
    path = Path(config.checkpoints_dir).resolve() / config.resume / "last.pt"
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
        events.emit("alert", level="warning", code="stale_code",
                    message=f"resuming with changed code: checkpoint has code "
                            f"{old.get('code', {}).get('fingerprint')}, now {meta['code']['fingerprint']}")
    return payload


def run_server(config: RunConfig, run_dir: Path, world_size: int, host: str, port: int,
               stop: threading.Event) -> int:
    """The PS (world_size > 1) or the single process (world_size == 1)."""

    from . import transport
    from .server import ParameterServer, resolve_device
    from .worker import run_worker

    single = world_size == 1
    role = "single" if single else "ps"
    spec = resolve_data(config.data, config.train_url, config.val_url)
    if config.num_classes and config.num_classes != len(spec.classes):
        raise DataError(f"num_classes is {config.num_classes} but {spec.train.manifest_path} lists "
                        f"{len(spec.classes)} classes. Fix: drop --num-classes or use matching data.")
    events = EventWriter(run_dir / "events.jsonl", config.run_id)
    cover(job_sources(config))  # the user's model, TOML and --watch paths join adt's code
    checkpoint_dir = Path(config.checkpoints_dir).resolve() / config.run_id
    meta = {"run_id": config.run_id, "code": startup_fingerprint(), "data_fingerprint": spec.fingerprint(),
            "data": spec.describe(), "started": time.time()}
    device = resolve_device(config.device if single else config.ps_device)
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
                checkpoint_dir=str(checkpoint_dir))
    if server.resume_note:
        events.emit("alert", level="warning", code="rule_changed", message=f"resumed with {server.resume_note}")
    _log(role, f"run {config.run_id}: {config.model}, data {spec.train.urls[0]}..., "
               f"version {server.version}, epoch {server.epoch}")
    failure: list[BaseException] = []
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
        transport.init(0, world_size, host, port)
    deadline = None
    try:
        while not server.all_left.wait(config.log_interval):
            server.call(lambda: server.report(config.log_interval))
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
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)
        transport.shutdown()
    return EXIT_OK if outcome in ("finished", "stopped") else EXIT_FAILED


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
    return "failed", "every worker was lost before the run finished"


def _reason(exc: BaseException) -> str:
    """An error for people: a loader process's error without the traceback torch wraps it in."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:  # "Caught X in DataLoader worker process 0. ...": last line
        return text.splitlines()[-1]
    return repr(exc)


def run_worker_process(rank: int, world_size: int, host: str, port: int, stop: threading.Event) -> int:
    from . import transport
    from .worker import run_worker

    worker = rank - 1
    transport.init(rank, world_size, host, port)
    client = transport.RpcClient(worker)
    try:
        job = client.job()
        config = RunConfig.from_dict(job["config"])
        cover(job_sources(config))  # as the PS does: the same files make the same fingerprint
        train = Split(job["train_urls"], job["train_manifest"], job["train_manifest_path"])
        problem = local_copy_problem(train, worker_shards(train.urls, worker, job["num_workers"],
                                                          config.loader_workers))
        if problem:  # on another machine: never train on other data than the PS validates on
            _log(f"worker{worker}", f"refusing to train: {problem}")
            client.register({"rank": rank, "pid": os.getpid(), "host": socket.gethostname(),
                             "data_problem": problem})
            transport.shutdown()
            return EXIT_BAD_INPUT
        reason = run_worker(client, config, train, worker, job["num_workers"], rank, stop)
        code = EXIT_OK
    except DataError as exc:  # a shard it cannot read (e.g. its server gone): leave, never hang in RPC
        reason, code = f"failed: {_reason(exc)}", EXIT_FAILED
    except RuntimeError as exc:
        _log(f"worker{worker}", f"lost the parameter server at {host}:{port} ({exc}). Exiting.")
        os._exit(EXIT_FAILED)  # the RPC agent cannot shut down cleanly without its peer
    _log(f"worker{worker}", f"leaving: {reason}")
    try:
        client.leave(reason)
    except RuntimeError:
        # The PS may close the moment the last worker has left, before its reply arrives.
        os._exit(code)
    transport.shutdown()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.node")
    parser.add_argument("--role", choices=("ps", "worker", "single"))
    parser.add_argument("--run-dir", help="the run directory with config.json (PS and single only)")
    args = parser.parse_args(argv)
    from .transport import rpc_env

    rank, world_size, host, port = rpc_env()
    role = "single" if world_size == 1 else "ps" if rank == 0 else "worker"
    if args.role and args.role != role:
        print(f"adt node: --role {args.role} contradicts RANK={rank} WORLD_SIZE={world_size} "
              f"(that is the {role}). Fix: rank 0 is the PS.", file=sys.stderr)
        return EXIT_BAD_INPUT
    startup_fingerprint()  # before anything else runs: this is the code this process loaded
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        if role == "worker":
            return run_worker_process(rank, world_size, host, port, stop)
        if not args.run_dir:
            print("adt node: the PS needs --run-dir DIR holding config.json.", file=sys.stderr)
            return EXIT_BAD_INPUT
        run_dir = Path(args.run_dir)
        config = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text())).validate()
        return run_server(config, run_dir, world_size, host, port, stop)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"adt {role}: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

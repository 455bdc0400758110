"""The `adt` command: parse arguments, validate the config once, hand off to the right mode."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from engine.config import AUTO, DEFAULT_DATA, SECTIONS, ConfigError, RunConfig, build_config
from engine.errors import CheckpointError, DataError
from engine.events import ExitCode
from engine.rundir import RunDir


class _ShowDefaults(argparse.HelpFormatter):
    """`--help` with every flag's default. A run flag's argparse default is None (so a TOML file
    can fill it in): its default shown is the RunConfig field's, read when help is printed, so a
    new field shows up by itself."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.help == argparse.SUPPRESS or "default" in text:
            return action.help
        config = RunConfig().to_dict()
        if action.default is None and action.dest in config:
            value = config[action.dest]
        elif action.default not in (None, argparse.SUPPRESS):
            value = action.default
        else:
            return action.help
        shown = ("on" if value else "off") if isinstance(value, bool) else repr(value) if value == "" else value
        if value == AUTO and not isinstance(value, bool):
            shown = "auto"
        if isinstance(value, list):
            shown = ", ".join(value) or "none"
        return f"{text} (default: {str(shown).replace('%', '%%')})".lstrip()


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Use _ShowDefaults for this parser and every subcommand's."""
    parser.formatter_class = _ShowDefaults
    for action in parser._actions:
        if action.help is None and action.option_strings:
            action.help = action.dest.replace("_", " ")  # argparse prints no help, so no default
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def _run_flags(p: argparse.ArgumentParser) -> None:
    """A flag for every RunConfig field, derived from its declaration (engine/config.py `setting`),
    grouped by section. Their argparse default is None (not given), so TOML or the field's
    default stands; the choices are checked by `RunConfig.validate`, with its message."""
    p.add_argument("--config", help="TOML file with run settings (flags win)")
    groups = {name: p.add_argument_group(f"{name} settings") for name in SECTIONS}
    for spec in dataclasses.fields(RunConfig):
        if spec.metadata["flag"]:
            groups[spec.metadata["section"]].add_argument(f"--{spec.name.replace('_', '-')}", **_flag_options(spec))


def _flag_options(spec: dataclasses.Field) -> dict[str, Any]:
    text, choices = spec.metadata["help"], spec.metadata["choices"]
    if choices and not all(choice in text for choice in choices):
        text += f"; one of {', '.join(choices)}"
    options: dict[str, Any] = {"help": text.replace("%", "%%"), "default": None}
    if spec.metadata["metavar"]:
        options["metavar"] = spec.metadata["metavar"]
    kind = {"int": int, "float": float, "str": str, "bool": bool, "list[str]": list}[str(spec.type)]
    if kind is bool:
        options["action"] = "store_true"
    elif kind is list:
        options["action"] = "append"
    elif kind is not str:
        options["type"] = kind
    return options


_NOT_CONFIG = {"config", "command", "no_ui", "func", "restart_on_change"}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    base: dict[str, Any] = {}
    if args.resume:  # a resumed run keeps its settings; flags (e.g. more --epochs) still win
        saved = RunDir(Path(args.runs_dir or "runs") / args.resume).config
        if not saved.is_file():
            raise ConfigError("resume", f"names run {args.resume!r}, but {saved} does not exist",
                              "pick a run id from `ls runs/`")
        base = json.loads(saved.read_text())
        base.update(resume="", run_id="", force=False, config_file="")  # --config is read again only if given
    return build_config(args.config, {**base, **{k: v for k, v in overrides.items() if v is not None}})


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.no_ui:
        from .headless import run_headless

        return run_headless(config)
    from .app import run_monitor

    return run_monitor(config, restart_on_change=args.restart_on_change)


def cmd_watch(args: argparse.Namespace) -> int:
    from .app import watch_run

    return watch_run(args.run_dir, args.compare)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from engine.synth import write_synthetic

    out = write_synthetic(args.out, num_classes=args.classes, image_size=args.size,
                          train_samples=args.train, val_samples=args.val,
                          train_shards=args.train_shards, val_shards=args.val_shards, seed=args.seed)
    print(f"wrote {out.resolve()}/train and /val")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from engine.prepare import prepare

    result = prepare(args.src, args.out, size=args.size, shards=args.shards, val_shards=args.val_shards,
                     seed=args.seed, workers=args.workers, loader_workers=args.loader_workers,
                     jobs=args.jobs)
    print("\n".join(result.lines()))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.preflight import preflight

    print("\n".join(preflight(config_from_args(args)).lines()))
    return 0


_LAUNCH_FLAGS = {"nnodes", "node_rank", "nproc_per_node", "master", "ifname", "dry_run"}


def cmd_launch(args: argparse.Namespace) -> int:
    from .multinode import NodePlan, launch, parse_master, prepare_run

    host, port = parse_master(args.master)
    plan = NodePlan(args.nnodes, args.node_rank, args.nproc_per_node, host, port, args.ifname).validate()
    config = config_from_args(argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                    if k not in _LAUNCH_FLAGS}))
    if config.mps:
        raise ConfigError("mps", "is on, but torchrun starts this node's processes, not adt",
                          "start MPS on each machine yourself (`nvidia-cuda-mps-control -d`), "
                          "or use --mps with `adt run`")
    # Only node 0 has a run dir: other nodes' workers get the config from the PS.
    run_dir = prepare_run(config, plan, args.workers, sys.stdout) if plan.node_rank == 0 else None
    return launch(plan, run_dir, config.grace_period, dry_run=args.dry_run)


def cmd_runs(args: argparse.Namespace) -> int:
    from .history import list_runs, runs_table

    runs = list_runs(args.runs_dir, args.checkpoints_dir)
    print(json.dumps([r.to_dict() for r in runs], indent=1) if args.json else runs_table(runs))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    png, html, summary = write_report(args.run_ids, args.runs_dir, args.out)
    print(summary)
    print(f"wrote {png}\nwrote {html}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .history import find_run
    from .tensorboard import export

    print(f"wrote {export(find_run(args.run_id, args.runs_dir), args.tensorboard)}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from .history import clean

    return clean(args.runs_dir, args.checkpoints_dir, args.run_ids, args.state, args.older_than, args.yes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adt", description="Asynchronous distributed training you can see and trust.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="train (opens the monitor; --no-ui for headless)")
    _run_flags(run)
    run.add_argument("--no-ui", action="store_true", help="run headless: plain progress on stdout")
    run.add_argument("--restart-on-change", action="store_true",
                     help="restart the job by itself when watched source or its config file changes")
    run.set_defaults(func=cmd_run)

    watch = sub.add_parser("watch", help="open the monitor on an existing run (re-attach)")
    watch.add_argument("run_dir", help="the run's directory, runs/<run-id>")
    watch.add_argument("--compare", default="", metavar="RUN",
                       help="a reference run (id or path) drawn beside it (as for adt run)")
    watch.set_defaults(func=cmd_watch)

    data = sub.add_parser("data", help="make data sets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the built-in synthetic data set")
    synth.add_argument("--out", default=DEFAULT_DATA)
    synth.add_argument("--classes", type=int, default=10)
    synth.add_argument("--size", type=int, default=32)
    synth.add_argument("--train", type=int, default=6000)
    synth.add_argument("--val", type=int, default=1000)
    synth.add_argument("--train-shards", type=int, default=8)
    synth.add_argument("--val-shards", type=int, default=2)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_data_synth)
    prep = data.add_parser("prepare", help="convert Tiny ImageNet or an ImageFolder tree to shards")
    prep.add_argument("src", help="tiny-imagenet-200/ (wnids.txt, train/, val/) or a dir with train/ and val/")
    prep.add_argument("--out", default="data/tiny-imagenet-wds")
    prep.add_argument("--size", type=int, default=0, help="resize to SIZE x SIZE (default: keep; must be uniform)")
    prep.add_argument("--shards", type=int, default=0, help="train shards (default: enough for every reader)")
    prep.add_argument("--val-shards", type=int, default=0)
    prep.add_argument("--seed", type=int, default=0, help="seed of the train shuffle")
    prep.add_argument("--workers", type=int, default=2, help="planned workers (sizes the default shard count)")
    prep.add_argument("--loader-workers", type=int, default=1, help="planned loader processes per worker")
    prep.add_argument("--jobs", type=int, default=0, help="conversion processes (default: CPUs, up to 8)")
    prep.set_defaults(func=cmd_data_prepare)

    check = sub.add_parser("check", help="check the data a run would read (exit 2 on a problem)")
    _run_flags(check)
    check.set_defaults(func=cmd_check)

    launch = sub.add_parser("launch", help="run this machine's share of a multi-node job under torchrun")
    _run_flags(launch)
    launch.add_argument("--nnodes", type=int, default=1, help="machines in the job")
    launch.add_argument("--node-rank", type=int, default=0, help="this machine: 0 (runs the PS) .. N-1")
    launch.add_argument("--nproc-per-node", type=int, default=2,
                        help="processes on each machine (node 0's first is the PS; the same on every node)")
    launch.add_argument("--master", default="127.0.0.1:29500",
                        help="HOST:PORT of node 0, reachable from every node (default 127.0.0.1:29500)")
    launch.add_argument("--ifname", default="", help="network interface RPC uses (e.g. eth0)")
    launch.add_argument("--dry-run", action="store_true",
                        help="print the torchrun commands (node 0: write the run dir) and exit")
    launch.set_defaults(func=cmd_launch)

    runs = sub.add_parser("runs", help="list runs, newest first")
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.add_argument("--runs-dir", default="runs")
    runs.add_argument("--checkpoints-dir", default="checkpoints")
    runs.set_defaults(func=cmd_runs)

    report = sub.add_parser("report", help="plot runs for comparison (PNG + HTML) and summarize them")
    report.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    report.add_argument("--out", help="PNG path (default reports/<ids>.png); the HTML goes beside it")
    report.add_argument("--runs-dir", default="runs")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="write a run's scalars as TensorBoard event files")
    export.add_argument("run_id", metavar="RUN", help="a run id or a run directory")
    export.add_argument("--tensorboard", required=True, metavar="DIR",
                        help="where to write them (DIR/<run-id>/); open with `tensorboard --logdir DIR`")
    export.add_argument("--runs-dir", default="runs")
    export.set_defaults(func=cmd_export)

    clean = sub.add_parser("clean", help="remove runs and their checkpoints (never a running one)")
    clean.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    clean.add_argument("--state", help="only runs in this state: finished, stopped, failed, diverged, "
                                       "crashed or new")
    clean.add_argument("--older-than", metavar="AGE", help="only runs started more than AGE ago (7d, 12h)")
    clean.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    clean.add_argument("--runs-dir", default="runs")
    clean.add_argument("--checkpoints-dir", default="checkpoints")
    clean.set_defaults(func=cmd_clean)
    _show_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `adt` command. Ctrl+C at any moment, while torch loads too, ends it with one line and
    code 130: heavy modules load only inside the commands, under this handler."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C now would be a traceback
        print("adt: interrupted", file=sys.stderr, flush=True)
        return ExitCode.INTERRUPTED


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]  # plain `adt` opens the monitor on the built-in data
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"adt: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""The one job configuration: a dataclass, read from TOML and flags, validated once at the edge.

Everything inside the engine trusts a `RunConfig` that passed `validate()`. This module imports
no torch, so the CLI and the monitor can check a config in milliseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

SMALL_INPUT_STEMS = ("auto", "on", "off")
OPTIMIZERS = ("sgd", "adamw")
UPDATE_RULES = ("auto", "sgd", "lr/staleness", "async-momentum", "dc-asgd", "lookahead", "lookahead-damped",
                "gap-aware", "lookahead-gap-aware", "delayed-nesterov", "local-sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
AUGMENTS = ("auto", "flip-crop", "crop", "none")
DEVICES = ("auto", "cpu", "cuda")
TRANSFER_DTYPES = ("fp32", "bf16")
TRANSPORTS = ("flat", "plain")
DEFAULT_DATA = "data/synthetic"
AUTO = -1  # workers, loader_workers: decided by the placement (engine/placement.py) at the edge


def rule_for(workers: int, optimizer: str = "sgd") -> str:
    """The update rule `auto` means for this many workers: the best measured at that count
    (docs/BENCHMARKS.md, Convergence). AdamW has no momentum buffer to look ahead with."""
    if optimizer != "sgd":
        return "gap-aware"
    return "lookahead" if workers <= 2 else "lookahead-gap-aware"


def update_rule_of(config: RunConfig) -> str:
    """The rule the run applies: the configured one, or what `auto` means for its workers."""
    if config.update_rule == "auto":
        return rule_for(config.workers, config.optimizer)
    return config.update_rule


class ConfigError(ValueError):
    """A config value a person must fix; `str()` is the whole message."""

    def __init__(self, field_name: str, problem: str, fix: str, source: str = "",
                 heading: str = "config error") -> None:
        where = f" in {source}" if source else ""
        super().__init__(f"{heading}{where}: '{field_name}' {problem}. Fix: {fix}.")
        self.field, self.problem, self.fix = field_name, problem, fix


@dataclass
class RunConfig:
    """Everything a run needs; saved as runs/<id>/config.json and inside every checkpoint."""

    # data: a data directory holding train/ and val/ shard folders, or explicit shard URLs
    data: str = DEFAULT_DATA
    train_url: str = ""
    val_url: str = ""
    # model and optimisation
    model: str = "cnn"  # cnn, a torchvision name, FILE.py:FUNCTION or MODULE:FUNCTION (engine/sources.py)
    small_input_stem: str = "auto"  # ResNets: 3x3 stride-1 stem, no max-pool; auto = images <= 64 px
    num_classes: int = 0  # 0: take it from the data manifest
    epochs: int = 3
    max_updates: int = 0  # stop after this many applied updates (0: run all epochs)
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05  # the peak learning rate (reached at the end of the warmup)
    lr_schedule: str = "cosine"  # after the warmup: cosine to zero, step (x0.1 at 50% and 75%), constant
    warmup: str = "1ep"  # linear warmup: "2ep" in epochs, "300" in updates, "0" for none
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: str = "auto"  # training only: flip-crop, crop (no flip) or none; auto: flip-crop unless the data's mirror changes its classes
    # asynchrony: how the PS turns pushes into updates (engine/rules.py)
    workers: int = AUTO  # auto: one per GPU with 2+ GPUs, one process (0) on one GPU, 2 on the CPU
    update_rule: str = "auto"  # auto: the measured best for the worker count (rule_for)
    local_steps: int = 8  # local-sgd: worker steps between exchanges
    outer_lr: float = 0.0  # local-sgd: the PS's step size on a worker's delta; 0: 1/workers (their mean)
    outer_momentum: float = 0.0  # local-sgd: the PS's Nesterov momentum on deltas
    dc_lambda: float = 2.0  # dc-asgd: the delay compensation's strength (adaptive, DC-ASGD-a)
    max_staleness: int = 0  # 0: no bound
    transfer_dtype: str = "fp32"
    overlap: bool = False  # push step k while step k+1 computes (hides the round trip; +1 staleness)
    transport: str = "flat"  # plain: one tensor per parameter, separate pull and push (for benchmarks)
    # input pipeline and devices
    loader_workers: int = AUTO  # decoding processes per training process; auto: the spare cores
    device: str = "auto"  # the workers' (and the single process's): auto = the GPUs when present
    ps_device: str = "auto"  # the parameter server's: auto = a spare GPU, else worker 0's, or the CPU
    compile: bool = False  # torch.compile the workers' model
    mps: bool = False  # the job's processes share a GPU through NVIDIA MPS (adt_tui/mps.py)
    # evaluation, checkpoints, health
    eval_every: int = 0  # updates between validations; 0: once per epoch
    bn_recompute: int = 2048  # training samples to recompute BatchNorm statistics on before validating
    stop_on_divergence: bool = False
    chance_warmup_evals: int = 1
    worker_timeout: float = 60.0
    max_restarts: int = 0  # per worker: a worker that dies brings the job back from a checkpoint taken then
    # processes and network
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    join_timeout: float = 300.0  # seconds the PS waits for its workers to join, and a worker for the PS
    grace_period: float = 15.0
    log_interval: float = 1.0
    seed: int = 0
    # where things go
    runs_dir: str = "runs"
    checkpoints_dir: str = "checkpoints"
    run_id: str = ""
    resume: str = ""
    force: bool = False
    # what else the job's code fingerprint and the stale-code watchers cover
    config_file: str = ""  # the TOML file the run was started with (absolute; set by build_config)
    watch: list[str] = field(default_factory=list)  # more files or directories

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "") -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    key, "is not a known setting", f"use one of: {', '.join(sorted(known))}", source
                )
        return cls(**values)

    def validate(self, source: str = "") -> RunConfig:
        """Check every field; raise ConfigError naming the first bad one. Returns self."""

        def bad(name: str, problem: str, fix: str) -> None:
            raise ConfigError(name, problem, fix, source)

        if isinstance(self.warmup, (int, float)) and not isinstance(self.warmup, bool):
            self.warmup = str(self.warmup)  # TOML `warmup = 300` means updates
        for name, kind in _TYPES.items():
            value = getattr(self, name)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                bad(name, f"must be {kind.__name__}, got {value!r}", f"set {name} to a {kind.__name__}")
        from .sources import parse_model, resnet_family  # it imports ConfigError from here

        try:
            parse_model(self.model)  # its form, and a user's file; names are checked with torchvision
        except ConfigError as exc:
            bad("model", exc.problem, exc.fix)
        if self.small_input_stem not in SMALL_INPUT_STEMS:
            bad("small_input_stem", f"is {self.small_input_stem!r}", f"use one of {', '.join(SMALL_INPUT_STEMS)}")
        if self.small_input_stem == "on" and not resnet_family(self.model):
            bad("small_input_stem", f"is 'on', but model {self.model!r} is not a torchvision ResNet "
                "(resnet*, resnext*, wide_resnet*), the only models with that stem",
                "use auto or off, or a ResNet")
        for path in self.watch:
            if not isinstance(path, str) or not Path(path).expanduser().exists():
                bad("watch", f"names {path!r}, which does not exist", "pass an existing file or directory")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"is {self.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
        if self.update_rule not in UPDATE_RULES:
            bad("update_rule", f"is {self.update_rule!r}", f"use one of {', '.join(UPDATE_RULES)}")
        if self.update_rule.startswith(("lookahead", "delayed-nesterov")) and self.optimizer != "sgd":
            bad("update_rule", f"is {self.update_rule!r}, which works on SGD's momentum, but the optimizer is "
                f"{self.optimizer!r}", "use --optimizer sgd, or another update rule")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"is {self.lr_schedule!r}", f"use one of {', '.join(LR_SCHEDULES)}")
        if self.augment not in AUGMENTS:
            bad("augment", f"is {self.augment!r}", f"use one of {', '.join(AUGMENTS)}")
        if parse_warmup(self.warmup) is None:
            bad("warmup", f"is {self.warmup!r}", "pass updates (e.g. 300) or epochs (e.g. 1ep, 0.5ep)")
        if self.local_steps < 1:
            bad("local_steps", f"is {self.local_steps}, but it must be at least 1", "pass e.g. --local-steps 4")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", f"is {self.label_smoothing}", "use a value in [0, 1)")
        if not 0 <= self.outer_momentum < 1:
            bad("outer_momentum", f"is {self.outer_momentum}", "use a value in [0, 1)")
        for name in ("outer_lr", "dc_lambda"):
            if getattr(self, name) < 0:
                bad(name, f"is {getattr(self, name)}, but it cannot be negative", f"pass {name} >= 0")
        for name in ("device", "ps_device"):
            value = getattr(self, name)
            if value not in DEVICES and not (value.startswith("cuda:") and value[5:].isdigit()):
                bad(name, f"is {value!r}", "use auto, cpu, cuda or cuda:N")
        if self.transport not in TRANSPORTS:
            bad("transport", f"is {self.transport!r}", f"use one of {', '.join(TRANSPORTS)}")
        if self.transfer_dtype not in TRANSFER_DTYPES:
            bad("transfer_dtype", f"is {self.transfer_dtype!r}", f"use one of {', '.join(TRANSFER_DTYPES)}")
        if not self.lr > 0:
            bad("lr", f"is {self.lr}, but the learning rate must be positive", "pass e.g. --lr 0.05")
        for name in ("workers", "loader_workers"):
            if getattr(self, name) < AUTO:
                bad(name, f"is {getattr(self, name)}, but it cannot be negative",
                    f"use 0 or more, or {AUTO} to let adt choose")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                bad(name, f"is {getattr(self, name)}, but it must be at least 1", f"pass a positive {name}")
        for name in ("num_classes", "max_updates", "momentum", "weight_decay", "max_staleness", "eval_every", "bn_recompute",
                     "chance_warmup_evals", "port", "max_restarts"):
            if getattr(self, name) < 0:
                bad(name, f"is {getattr(self, name)}, but it cannot be negative", f"pass {name} >= 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", f"is {self.momentum}", "use a value in [0, 1)")
        if self.port > 65535:
            bad("port", f"is {self.port}", "use 0 (pick a free port) or a port below 65536")
        for name in ("worker_timeout", "join_timeout", "grace_period", "log_interval"):
            if not getattr(self, name) > 0:
                bad(name, f"is {getattr(self, name)}, but it must be positive", f"pass {name} > 0")
        if not (self.train_url or self.data):
            bad("data", "is empty", "pass --data DIR or --train-url/--val-url")
        if bool(self.train_url) != bool(self.val_url):
            bad("val_url" if self.train_url else "train_url", "is missing while the other URL is set",
                "pass both --train-url and --val-url, or --data DIR")
        return self


def parse_warmup(text: str) -> tuple[float, str] | None:
    """'300' -> (300, 'updates'); '1ep' or '0.5ep' -> (1.0, 'epochs'); None if malformed."""
    text = str(text).strip()
    unit = "epochs" if text.endswith("ep") else "updates"
    try:
        value = float(text.removesuffix("ep"))
    except ValueError:
        return None
    return (value, unit) if value >= 0 and value == value else None


_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}[f.type]  # type: ignore[index]
    for f in dataclasses.fields(RunConfig)
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys may sit at the top level or under [run]."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file {path} does not exist", "pass an existing TOML file")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"file {path} is not valid TOML ({exc})", "fix the syntax") from exc
    values = {**values.pop("run", {}), **values}
    return {key.replace("-", "_"): value for key, value in values.items()}


def build_config(toml_path: str | None, overrides: dict[str, Any]) -> RunConfig:
    """TOML values first, then flags (overrides win); validated."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    from_toml = load_toml(toml_path) if toml_path else {}
    if from_toml:  # a bad value the TOML file sets (and no flag replaces) is reported with its file
        kept = {k: v for k, v in from_toml.items() if k not in flags}
        RunConfig.from_dict(kept, str(toml_path)).validate(str(toml_path))
    if toml_path:  # watched with the code: an edit shows as "config changed"
        flags["config_file"] = str(Path(toml_path).resolve())
    config = RunConfig.from_dict({**from_toml, **flags}).validate()
    # The user's intent, checked here at the edge: inside, `device` is the placement's, and a
    # job placed on the CPU by `auto` may still run its MPS daemon (the tests' stand-in does).
    if config.mps and config.device == "cpu":
        raise ConfigError("mps", "is on, but device is 'cpu': MPS shares a GPU between processes",
                          "pass --device cuda, or leave out --mps")
    return config


_MISSING = object()


def changed_settings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two parsed TOML files (added and removed ones too)."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k, _MISSING) != after.get(k, _MISSING))

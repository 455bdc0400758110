"""The one job configuration: a dataclass, read from TOML and flags, validated once at the edge.

Everything inside the engine trusts a `RunConfig` that passed `validate()`. This module imports
no torch, so the CLI and the monitor can check a config in milliseconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .errors import ConfigError
from .rule_registry import RULE_NAMES, auto_ranges, rule_spec
from .sources import parse_model, resnet_family

SMALL_INPUT_STEMS = ("auto", "on", "off")
OPTIMIZERS = ("sgd", "adamw")
UPDATE_RULES = RULE_NAMES
LR_SCHEDULES = ("constant", "cosine", "step")
AUGMENTS = ("auto", "flip-crop", "crop", "none")
TRANSFER_DTYPES = ("fp32", "bf16")
TRANSPORTS = ("flat", "plain")
DEFAULT_DATA = "data/synthetic"
AUTO = -1  # workers, loader_workers: decided by the placement (engine/placement.py) at the edge


def update_rule_of(config: RunConfig) -> str:
    """The rule the run applies: the configured one, or what `auto` means for its workers."""
    return rule_spec(config.update_rule, config.workers, config.optimizer).name


def setting(section: str, default: Any, help: str, *, choices: tuple[str, ...] = (),
            at_least: float | None = None, positive: bool = False, below_one: bool = False,
            metavar: str | None = None, flag: bool = True) -> Any:
    """One setting, declared once: its default, its `--help` line, its section (the TOML table
    and the help group it appears under), its choices and its bounds. The CLI flag, the TOML key
    and the generic checks of `RunConfig.validate` are derived from this; `flag=False` is for
    fields adt fills in itself."""
    metadata = {"section": section, "help": help, "choices": choices, "at_least": at_least,
                "positive": positive, "below_one": below_one, "metavar": metavar, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _section(name: str) -> Any:
    return lambda *args, **kwargs: setting(name, *args, **kwargs)


# The sections, in --help's order; a TOML file may put a key at the top level, under [run] or
# under its section's table.
SECTIONS = ("data", "model", "optimization", "asynchrony", "devices", "health", "network", "paths")
_data, _model, _optim, _async, _devices, _health, _network, _paths = map(_section, SECTIONS)


def overlaps(config: RunConfig | Settings) -> bool:
    """Whether each worker pushes step k while step k+1 computes (`--overlap`; the flat transport
    only), so that its gradients land two rounds of pushes after it was sent the parameters."""
    return config.overlap and config.transport == "flat"


class Settings(SimpleNamespace):
    """Some sections of a run's config (RunConfig.section), read-only."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{name}: a config section is read-only")


@dataclass
class RunConfig:
    """Everything a run needs; saved as runs/<id>/config.json and inside every checkpoint."""

    data: str = _data(DEFAULT_DATA, "data directory with train/ and val/ shard folders")
    train_url: str = _data("", "train shards: a path, http(s):// URL or pipe:COMMAND, "
                           "e.g. http://host/train/train-{000000..000003}.tar")
    val_url: str = _data("", "validation shard URL")
    augment: str = _data("auto", "training augmentation: flip-crop (random crop + flip), crop (no flip: "
                         "digits, text) or none; auto: crop when flipping changes the data's class means "
                         "(measured when the shards were written), else flip-crop", choices=AUGMENTS)
    model: str = _model("cnn", "cnn (small, fast), a torchvision model name (resnet18, resnet50, "
                        "efficientnet_b0, vit_b_16, ...), or your own build(num_classes): "
                        "path/to/file.py:build or package.module:build (engine/sources.py)")
    small_input_stem: str = _model("auto", "ResNets: 3x3 stride-1 first convolution and no max-pool; "
                                   "auto (on for images up to 64 px), on or off", choices=SMALL_INPUT_STEMS)
    num_classes: int = _model(0, "classes the model predicts; 0: as many as the data's manifest lists",
                              at_least=0)
    compile: bool = _model(False, "torch.compile the workers' model")
    epochs: int = _optim(3, "epochs", at_least=1)
    max_updates: int = _optim(0, "stop after this many updates (0: all epochs)", at_least=0)
    batch_size: int = _optim(64, "images per step and worker", at_least=1)
    optimizer: str = _optim("sgd", "the optimizer", choices=OPTIMIZERS)
    lr: float = _optim(0.05, "peak learning rate (reached at the end of the warmup)", positive=True)
    lr_schedule: str = _optim("cosine", "after the warmup: cosine (to zero), step (x0.1 at 50% and 75% of "
                              "the run) or constant", choices=LR_SCHEDULES)
    warmup: str = _optim("1ep", "linear LR warmup: updates (300) or epochs (1ep, 0.5ep); 0 for none")
    momentum: float = _optim(0.9, "SGD momentum", at_least=0, below_one=True)
    weight_decay: float = _optim(5e-4, "weight decay", at_least=0)
    label_smoothing: float = _optim(0.0, "cross-entropy label smoothing, e.g. 0.1", at_least=0, below_one=True)
    seed: int = _optim(0, "seed of the model's initialisation and the data order")
    workers: int = _async(AUTO, "worker processes; 0 trains in one process, no RPC; auto (-1): one per GPU "
                          "with 2+ GPUs, one process on one GPU, 2 on the CPU", at_least=AUTO)
    update_rule: str = _async("auto", "how the PS applies pushes; auto: " + auto_ranges()
                              + " (README: Learning as well as one process)",
                              choices=UPDATE_RULES)
    local_steps: int = _async(8, "local-sgd: worker steps between exchanges", at_least=1)
    outer_lr: float = _async(0.0, "local-sgd: the PS's step size on a worker's delta; 0: 1/workers, their mean",
                             at_least=0)
    outer_momentum: float = _async(0.0, "local-sgd: the PS's Nesterov momentum", at_least=0, below_one=True)
    dc_lambda: float = _async(2.0, "dc-asgd: strength of the delay compensation", at_least=0)
    max_staleness: int = _async(0, "drop pushes staler than this (0: no bound)", at_least=0)
    transfer_dtype: str = _async("fp32", "parameter and gradient traffic", choices=TRANSFER_DTYPES)
    transport: str = _async("flat", "flat (one buffer per message) or plain (per-parameter; for comparison)",
                            choices=TRANSPORTS)
    overlap: bool = _async(False, "push step k while step k+1 computes: hides the round trip; "
                           "pushes land a round later (staleness about 2N-1)")
    device: str = _devices("auto", "the workers' device: auto (the GPUs when present, worker k on GPU k mod G), "
                           "cpu, cuda or cuda:N")
    ps_device: str = _devices("auto", "the parameter server's device: auto (a spare GPU, else worker 0's; "
                              "the CPU without GPUs), cpu, cuda or cuda:N")
    mps: bool = _devices(False, "workers sharing a GPU run side by side through the job's own NVIDIA MPS daemon")
    loader_workers: int = _devices(AUTO, "DataLoader processes per training process; 0: inline; auto (-1): "
                                   "the spare cores split over the GPU processes, 1 on the CPU", at_least=AUTO)
    eval_every: int = _health(0, "validate every K updates (0: once per epoch)", at_least=0)
    bn_recompute: int = _health(2048, "training samples to recompute BatchNorm statistics on before each "
                                "validation (0: average the workers' statistics)", at_least=0)
    stop_on_divergence: bool = _health(False, "stop the run when the loss diverges")
    chance_warmup_evals: int = _health(1, "validations at chance accuracy tolerated before the alert", at_least=0)
    worker_timeout: float = _health(60.0, "seconds without a push before a worker counts as lost", positive=True)
    max_restarts: int = _health(0, "per worker: when one dies, checkpoint and restart the job from there, up "
                                "to K times (README: A lost worker comes back)", at_least=0)
    host: str = _network("127.0.0.1", "RPC address (loopback only unless you ask for more)")
    port: int = _network(0, "rendezvous port (0: a free one)", at_least=0)
    join_timeout: float = _network(300.0, "seconds the PS waits for every worker to join (and a worker for the "
                                   "PS) before the run fails naming who never came", positive=True)
    grace_period: float = _network(15.0, "seconds to wait before killing on stop", positive=True)
    log_interval: float = _network(1.0, "seconds between a process's metrics events", positive=True)
    runs_dir: str = _paths("runs", "where run directories go")
    checkpoints_dir: str = _paths("checkpoints", "where checkpoints go")
    run_id: str = _paths("", "name for a new run (default: time-based)")
    resume: str = _paths("", "continue a run from its last checkpoint", metavar="RUN_ID")
    force: bool = _paths(False, "resume even if the data fingerprint differs (never with another model shape)")
    watch: list[str] = _paths([], "a file or directory the job depends on, watched and fingerprinted with its "
                              "code (repeatable; directories: their *.py files)", metavar="PATH")
    compare: str = _paths("", "a reference run (id or path) drawn beside this one: its validation accuracy "
                          "and training loss as ghost lines, and where this run stands against it at "
                          "the same samples seen", metavar="RUN")
    tensorboard: str = _paths("", "also write the run's scalars (loss, accuracy, validation, LR, staleness, "
                              "images/s; steps in samples seen) live as TensorBoard event files into DIR/<run-id>; "
                              "needs the tensorboard package", metavar="DIR")
    config_file: str = _paths("", "the TOML file the run was started with (set by adt)", flag=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section(self, *names: str) -> Settings:
        """The settings of these sections only: what one component reads. Another section's
        setting is an AttributeError there, so a component's reach is in its signature."""
        unknown = set(names) - set(SECTIONS)
        if unknown:
            raise ValueError(f"no such section: {', '.join(sorted(unknown))}")
        return Settings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                           if f.metadata.get("section") in names})

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
        try:
            parse_model(self.model)  # its form, and a user's file; names are checked with torchvision
        except ConfigError as exc:
            bad("model", exc.problem, exc.fix)
        for f in dataclasses.fields(self):
            _check_declared(f, getattr(self, f.name), bad)
        if self.small_input_stem == "on" and not resnet_family(self.model):
            bad("small_input_stem", f"is 'on', but model {self.model!r} is not a torchvision ResNet "
                "(resnet*, resnext*, wide_resnet*), the only models with that stem",
                "use auto or off, or a ResNet")
        for path in self.watch:
            if not isinstance(path, str) or not Path(path).expanduser().exists():
                bad("watch", f"names {path!r}, which does not exist", "pass an existing file or directory")
        if self.optimizer not in rule_spec(self.update_rule, self.workers, self.optimizer).optimizers:
            bad("update_rule", f"is {self.update_rule!r}, which works on SGD's momentum, but the optimizer is "
                f"{self.optimizer!r}", "use --optimizer sgd, or another update rule")
        if parse_warmup(self.warmup) is None:
            bad("warmup", f"is {self.warmup!r}", "pass updates (e.g. 300) or epochs (e.g. 1ep, 0.5ep)")
        for name in ("device", "ps_device"):
            value = getattr(self, name)
            if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
                bad(name, f"is {value!r}", "use auto, cpu, cuda or cuda:N")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            bad("tensorboard", f"is {self.tensorboard!r}, but the tensorboard package is not installed",
                "pip install tensorboard (or pip install -e '.[tensorboard]'), or leave out --tensorboard")
        if self.port > 65535:
            bad("port", f"is {self.port}", "use 0 (pick a free port) or a port below 65536")
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


def _check_declared(f: dataclasses.Field, value: Any, bad: Any) -> None:
    """The checks a field's declaration (`setting`) implies: its choices and its bounds."""
    spec, name = f.metadata, f.name
    if spec["choices"] and value not in spec["choices"]:
        bad(name, f"is {value!r}", f"use one of {', '.join(spec['choices'])}")
    if spec["at_least"] == AUTO and value < AUTO:
        bad(name, f"is {value}, but it cannot be negative", f"use 0 or more, or {AUTO} to let adt choose")
    elif spec["at_least"] == 1 and value < 1:
        bad(name, f"is {value}, but it must be at least 1", f"pass a positive {name}")
    elif spec["at_least"] == 0 and value < 0:
        bad(name, f"is {value}, but it cannot be negative", f"pass {name} >= 0")
    if spec["positive"] and not value > 0:
        bad(name, f"is {value}, but it must be positive", f"pass {name} > 0")
    if spec["below_one"] and not value < 1:
        bad(name, f"is {value}", "use a value in [0, 1)")


_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool, "list[str]": list}[f.type]  # type: ignore[index]
    for f in dataclasses.fields(RunConfig)
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys may sit at the top level, under [run] or under their section's
    table ([data], [optimization], ... as SECTIONS names them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", f"file {path} does not exist", "pass an existing TOML file")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"file {path} is not valid TOML ({exc})", "fix the syntax") from exc
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and (key == "run" or key in SECTIONS):
            flat.update(value)
        else:
            flat[key] = value
    return {key.replace("-", "_"): value for key, value in flat.items()}


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

"""What a job's code is: adt's own sources, the model it trains, the TOML file it was started
with and any `--watch` paths. The code fingerprint and the stale-code watchers take the job's
file list from `job_sources`.

`--model` takes three forms, told apart here without importing torch (engine/models.py builds):
- a name: `cnn`, or any torchvision classification model (`resnet50`, `vit_b_16`, ...);
- `path/to/file.py:build`: a Python file; inside a package (a directory with __init__.py) it is
  imported as that package's module, so its relative imports work;
- `package.module:build`: a module found from the working directory or on sys.path.
`build(num_classes)` returns the nn.Module. Every process resolves the same string the same way,
so workers on other machines import the model as the PS does (from the same paths).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .fingerprint import PROJECT_ROOT, SOURCE_DIRS

if TYPE_CHECKING:
    from .config import RunConfig

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
FORMS = "cnn, a torchvision model name (resnet50, efficientnet_b0, vit_b_16, ...), FILE.py:FUNCTION or MODULE:FUNCTION"
RESNET_FAMILY = ("resnet", "resnext", "wide_resnet")


def resnet_family(model: str) -> bool:
    """torchvision's ResNets (resnet*, resnext*, wide_resnet*): the models with a small-input stem."""
    return ":" not in model and model.startswith(RESNET_FAMILY)


@dataclass(frozen=True)
class ModelSource:
    """Where `--model` comes from: a name, or a user's builder function in a file or module."""

    spec: str
    name: str = ""  # cnn or a torchvision name; empty for a user's builder
    function: str = ""
    module: str = ""  # the dotted name to import; empty for a file outside any package
    file: Path | None = None  # the user's file (the module's file)
    root: Path | None = None  # the directory the import starts from (put on sys.path)
    package: Path | None = None  # the top package directory holding the file, if any

    def files(self) -> list[Path]:
        """What the job depends on besides adt: the package directory, else the file."""
        found = self.package or self.file
        return [found] if found else []

    def load(self) -> Callable[..., Any]:
        """Import the user's file or module and return its builder; ConfigError naming `model`
        when the import raises or the function is missing."""
        try:
            if self.root is not None and str(self.root) not in sys.path:
                sys.path.insert(0, str(self.root))  # as `python -m` or `python file.py` would
            module = importlib.import_module(self.module) if self.module else _import_file(self.file)
        except (Exception, SystemExit) as exc:
            raise ConfigError("model", f"is {self.spec!r}, but importing {self.file} raised "
                              f"{_failure(exc, self.package or self.file)}",
                              f"fix that file (python {self.file} shows the whole traceback)") from exc
        builder = getattr(module, self.function, None)
        if not callable(builder):
            names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
            close = difflib.get_close_matches(self.function, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError("model", f"is {self.spec!r}, but {self.file} has no function "
                              f"{self.function!r}{hint}",
                              f"define `def {self.function}(num_classes): return model` there, "
                              "or name the function it has")
        return builder


def parse_model(spec: str) -> ModelSource:
    """Tell `--model`'s form apart and find a user's file; ConfigError naming `model` if it cannot be."""
    if ":" not in spec:
        if not _NAME.match(spec):
            raise ConfigError("model", f"is {spec!r}, which is not a model name", f"use {FORMS}")
        return ModelSource(spec, name=spec)
    where, function = spec.rsplit(":", 1)
    if not _NAME.match(function):
        raise ConfigError("model", f"is {spec!r}, but {function!r} is not a function name",
                          "end it with the builder's name, e.g. models/net.py:build")
    if where.endswith(".py") or "/" in where or os.sep in where:
        return _file_source(spec, where, function)
    if not _DOTTED.match(where):
        raise ConfigError("model", f"is {spec!r}, which is neither FILE.py:FUNCTION nor "
                          "MODULE:FUNCTION", f"use {FORMS}")
    return _module_source(spec, where, function)


def _file_source(spec: str, where: str, function: str) -> ModelSource:
    path = Path(where).expanduser()
    if not path.is_file():
        raise ConfigError("model", f"is {spec!r}, but the file {path.resolve()} does not exist",
                          "pass an existing Python file, e.g. --model models/net.py:build "
                          "(relative to the directory adt runs in)")
    path = path.resolve()
    parts, folder = [path.stem], path.parent
    while (folder / "__init__.py").is_file():  # a package: import it as one, relative imports work
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1:  # a lone file: its neighbours importable, as with `python file.py`
        return ModelSource(spec, function=function, file=path, root=path.parent)
    return ModelSource(spec, function=function, module=".".join(parts), file=path, root=folder,
                       package=folder / parts[0])


def _module_source(spec: str, module: str, function: str) -> ModelSource:
    """Find the module's file without importing it: from the working directory, then sys.path."""
    parts = module.split(".")
    for entry in dict.fromkeys([os.getcwd(), *sys.path]):
        root = Path(entry or os.getcwd()).resolve()
        base = root.joinpath(*parts)
        for file in (base.with_suffix(".py"), base / "__init__.py"):
            if file.is_file():
                top = root / parts[0]
                return ModelSource(spec, function=function, module=module, file=file, root=root,
                                   package=top if top.is_dir() else None)
    raise ConfigError("model", f"is {spec!r}, but no module {module!r} is found in {os.getcwd()} "
                      "or on sys.path", f"run adt in the directory holding {parts[0]}/ (or "
                      f"{parts[0]}.py), install it, or pass its file: path/to/{parts[-1]}.py:{function}")


def _import_file(path: Path | None) -> Any:
    assert path is not None
    name = "adt_model_" + re.sub(r"\W", "_", path.as_posix())  # one module per file, whatever its stem
    if name in sys.modules:  # built again in the same process: the code it already runs
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _failure(exc: BaseException, base: Path | None) -> str:
    """The error in one line with the user's frame nearest it (a frame in the file or package
    `base`), e.g. `NameError: name 'nn' is not defined (net.py, line 3)`."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({Path(exc.filename).name}, line {exc.lineno})"
    mine = [f for f in frames if base is not None and Path(f.filename).is_relative_to(base)]
    if mine:
        return f"{text} ({Path(mine[-1].filename).name}, line {mine[-1].lineno})"
    return text


def job_sources(config: RunConfig, own: Iterable[str | Path] | None = None) -> list[Path]:
    """Every path the job depends on: adt's code (`own`, default engine/ and adt_tui/), the user's
    model file or package, the TOML file it was started with and the --watch paths."""
    paths = [Path(p) for p in (own if own is not None else (PROJECT_ROOT / d for d in SOURCE_DIRS))]
    try:
        paths += parse_model(config.model).files()
    except ConfigError:
        pass  # gone since the job started: building the model reports it
    if config.config_file:
        paths.append(Path(config.config_file))
    paths += [Path(p) for p in config.watch]
    return list(dict.fromkeys(p.expanduser().resolve() for p in paths))

"""What a running job depends on, as it was when the job started, so that a change has a name.

Each start of a job (adt_tui/controller.py) takes a `StartedSources`: the paths the job's code
fingerprint covers (engine/sources.py: adt's code, the user's model, the TOML config, --watch
paths), their fingerprint at the start, and the settings the TOML file held then; its `StaleCode`
says what changed since. A changed file is named by its path below the watched root
(`engine/worker.py`, `my_model.py`); the config file by the settings that changed
(`adt.toml (config changed: epochs, lr)`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.config import ConfigError, RunConfig, changed_settings, load_toml
from engine.fingerprint import source_hash


class StartedSources:
    """The job's files and TOML settings as the job started."""

    def __init__(self, paths: Iterable[str | Path], config_file: str = "") -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.config_file = Path(config_file).resolve() if config_file else None
        self.fingerprint = source_hash(self.paths)  # the engine's hash over the same files
        self.settings = self._settings() or {}

    def _settings(self) -> dict[str, Any] | None:
        """The config file's settings now; None while it is not valid TOML (or gone)."""
        if self.config_file is None:
            return {}
        try:
            return load_toml(self.config_file)
        except ConfigError:
            return None

    def now(self) -> str:
        return source_hash(self.paths)

    def is_config(self, path: str) -> bool:
        return self.config_file is not None and Path(path) == self.config_file

    def name(self, path: str) -> str:
        """A changed path for people: below its watched root, the config file with its changes."""
        p = Path(path)
        if self.is_config(path):
            now = self._settings()
            keys = changed_settings(self.settings, now) if now is not None else []
            what = ("not valid TOML now" if now is None else ", ".join(keys) if keys
                    else "no setting differs")
            return f"{p.name} (config changed: {what})"
        roots = [r for r in self.paths if p == r or p.is_relative_to(r)]
        if not roots:
            return str(p)
        return str(p.relative_to(max(roots, key=lambda r: len(r.parts)).parent))

    def names(self, paths: Iterable[str]) -> list[str]:
        return [self.name(p) for p in paths]

    def updated(self, config: RunConfig) -> RunConfig:
        """A copy of `config` with the settings its TOML file changed since the start, for a
        restart. A setting a flag overrode keeps the flag's value: the running value is not the
        one the file held. ConfigError when the file is not valid now."""
        values = config.to_dict()
        if self.config_file is not None:
            now = load_toml(self.config_file)
            defaults = RunConfig().to_dict()
            for key in changed_settings(self.settings, now):
                if key in defaults and values[key] == self.settings.get(key, defaults[key]):
                    values[key] = now.get(key, defaults[key])
        source = str(self.config_file or "")
        return RunConfig.from_dict(values, source).validate(source)


class StaleCode:
    """Whether a running job runs its files as they are now: what changed since it started, and
    since when it is stale. The job controller takes one at each start; the monitor and the
    headless runner read it."""

    def __init__(self, sources: StartedSources) -> None:
        self.sources = sources
        self.now: str | None = None  # the files' fingerprint now, while it differs from the job's
        self.paths: list[str] = []  # what changed, while the job is stale
        self.since: float | None = None  # monotonic: when it first went stale

    def changed(self, paths: Iterable[str], runs: str) -> bool:
        """Note files that changed under a job that runs the code `runs` (a fingerprint); True
        when they leave its files different from that code."""
        now = self.sources.now()
        if now == runs:  # saved back to what the job runs: not stale after all
            self.now, self.paths = None, []
            return False
        self.now, self.paths = now, sorted(set(self.paths) | set(paths))
        if self.since is None:
            self.since = time.monotonic()
        return True

    def names(self) -> list[str]:
        return self.sources.names(self.paths)

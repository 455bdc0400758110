"""Code fingerprints: which source a process really runs.

A hash over the job's files (path + bytes): adt's own Python files, plus what the job adds to them
(engine/sources.py: the user's model, the TOML file it was started with, --watch paths), and the
git commit and dirty flag when the project is a git checkout. Recorded at launch, in every
checkpoint, and by every worker for the code it actually imported, so "was it running old code?"
has an answer.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("engine", "adt_tui")


def _resolved(paths: Iterable[str | Path] | None) -> list[Path]:
    return [Path(p) if Path(p).is_absolute() else PROJECT_ROOT / p
            for p in (SOURCE_DIRS if paths is None else paths)]


def source_files(paths: Iterable[str | Path] | None = None) -> list[Path]:
    """The files a fingerprint reads: a directory's `*.py` files, a file itself (any kind)."""
    files: list[Path] = []
    for root in _resolved(paths):
        if root.is_file():
            files.append(root)
        else:
            files.extend(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(set(files))


def file_digests(paths: Iterable[str | Path] | None = None) -> dict[str, str]:
    """{name: sha256 of the bytes}; a name is relative to the project when inside it."""
    digests = {}
    for path in source_files(paths):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # deleted between listing and reading: the next fingerprint will differ anyway
        name = path.relative_to(PROJECT_ROOT).as_posix() if path.is_relative_to(PROJECT_ROOT) else path.as_posix()
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def combine(digests: dict[str, str]) -> str:
    """12 hex chars for a set of file digests (in name order, so reading order does not matter)."""
    whole = hashlib.sha256()
    for name in sorted(digests):
        whole.update(f"{name}\0{digests[name]}\0".encode())
    return whole.hexdigest()[:12]


def source_hash(paths: Iterable[str | Path] | None = None) -> str:
    return combine(file_digests(paths))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """{'git_commit': str|None, 'git_dirty': bool|None} of adt's checkout."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    status = _git("status", "--porcelain", "--", *SOURCE_DIRS) if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def code_fingerprint(paths: Iterable[str | Path] | None = None) -> dict[str, Any]:
    """{'fingerprint': 12 hex chars, 'git_commit', 'git_dirty', 'covers': the paths hashed}."""
    covers = _resolved(paths)
    return {"fingerprint": source_hash(covers), **git_state(), "covers": [str(p) for p in covers]}


_loaded: dict[str, str] | None = None  # file digests of the code this process runs
_covers: list[Path] = []
_git_at_start: dict[str, Any] = {}


def startup_fingerprint() -> dict[str, Any]:
    """The fingerprint of the code this process loaded: adt's own code is read on the first call
    (at process start), the job's files when `cover` adds them."""
    global _loaded
    if _loaded is None:
        _covers[:] = _resolved(None)
        _loaded = file_digests(_covers)
        _git_at_start.update(git_state())
    return {"fingerprint": combine(_loaded), **_git_at_start, "covers": [str(p) for p in _covers]}


def cover(paths: Iterable[str | Path]) -> None:
    """Add the job's own files (engine.sources.job_sources) once the config is known; a file
    read at start keeps the bytes it had then."""
    startup_fingerprint()
    assert _loaded is not None
    new = [p for p in _resolved(paths) if p not in _covers]
    _covers.extend(new)
    for name, digest in file_digests(new).items():
        _loaded.setdefault(name, digest)

"""Code fingerprints: which source a process really runs.

A hash over the project's Python files (path + bytes), plus the git commit and dirty flag when the
project is a git checkout. Recorded at launch, in every checkpoint, and by every worker for the
code it actually imported, so "was it running old code?" has an answer.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("engine", "adt_tui")


def source_files(dirs: Iterable[str | Path] | None = None) -> list[Path]:
    roots = [Path(d) if Path(d).is_absolute() else PROJECT_ROOT / d for d in (dirs or SOURCE_DIRS)]
    files: list[Path] = []
    for root in roots:
        files.extend(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(files)


def source_hash(dirs: Iterable[str | Path] | None = None) -> str:
    digest = hashlib.sha256()
    for path in source_files(dirs):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # deleted between listing and reading: the next fingerprint will differ anyway
        digest.update(path.relative_to(PROJECT_ROOT).as_posix().encode() if path.is_relative_to(PROJECT_ROOT)
                      else path.as_posix().encode())
        digest.update(b"\0")
        digest.update(data)
    return digest.hexdigest()[:12]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_fingerprint(dirs: Iterable[str | Path] | None = None) -> dict[str, Any]:
    """{'fingerprint': 12 hex chars, 'git_commit': str|None, 'git_dirty': bool|None}."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    status = _git("status", "--porcelain", "--", *SOURCE_DIRS) if commit else None
    return {
        "fingerprint": source_hash(dirs),
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
    }


_at_start: dict[str, Any] | None = None


def startup_fingerprint() -> dict[str, Any]:
    """The fingerprint of the code this process loaded: taken on first call (at process start)."""
    global _at_start
    if _at_start is None:
        _at_start = code_fingerprint()
    return _at_start

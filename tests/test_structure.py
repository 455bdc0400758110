"""The house's shape: no import circle, worker and server side by side, codes declared once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from engine.events import AlertCode

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "adt_tui")


def _imports(path: Path, package: str) -> set[str]:
    """The project modules a file imports, at load time or inside a function (a deferred import
    still ties the two modules together); TYPE_CHECKING blocks left out."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom):
                base = (f"{package}.{node.module}" if node.module else package) if node.level else node.module
                for alias in node.names:
                    found.add(f"{base}.{alias.name}")
                    found.add(base or "")
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit(inner)

    visit(ast.parse(path.read_text()).body)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"{p}.{f.stem}": f for p in PACKAGES for f in (ROOT / p).glob("*.py") if f.stem != "__init__"}
    return {name: {m for m in _imports(path, name.split(".")[0]) if m in modules and m != name}
            for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_circle():
    graph = _graph()
    circles = sorted(name for name in graph if name in _reaches(graph, name))
    assert circles == [], circles


def test_worker_and_server_are_peers():
    graph = _graph()
    assert "engine.server" not in _reaches(graph, "engine.worker")
    assert "engine.server" not in _reaches(graph, "engine.transport")
    assert "engine.worker" not in _reaches(graph, "engine.server")


def test_alert_codes_are_named_constants_and_documented():
    literal = re.compile(r'_alert\("(?:error|warning)", "|code="[a-z_]+"|\("(?:error|warning)", "[a-z_]+",')
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            assert not literal.search(path.read_text()), f"{path}: use engine.events.AlertCode"
    documented = (ROOT / "docs" / "events.md").read_text()
    for code in AlertCode:
        assert code is AlertCode.PROCESS_EXIT or f"`{code}`" in documented, code


# What adt reads from the environment: how a launcher (adt's supervisor or torchrun) wires the
# processes together, never a setting. Settings travel in the run's config (devices included).
PLUMBING = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
            "TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "OMP_NUM_THREADS", "PYTHONPATH",
            "CUDA_VISIBLE_DEVICES", "TORCHELASTIC_USE_AGENT_STORE",
            "ADT_PROFILE"}  # ADT_PROFILE: a developer's profiler switch


def _environment_reads(path: Path) -> set[str]:
    """The names a file reads with os.environ[...], os.environ.get(...) or os.getenv(...), or
    through a name `env` (a copy of the environment, or the environment handed in)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                and ast.unparse(node.value).endswith(("environ", "env"))):
            key = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("environ.get", "env.get", "getenv")):
            key = node.args[0] if node.args else None
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.add(key.value)
    return found


def test_no_setting_travels_by_environment_variable():
    """A device (or any setting) read from a variable that one launcher sets is how `adt launch`
    once failed at its first GPU push: every process reads settings from the run's config."""
    from engine.config import RunConfig

    settings = {name.upper() for name in RunConfig.__dataclass_fields__}
    reads = {name: f.relative_to(ROOT) for p in PACKAGES for f in (ROOT / p).glob("*.py")
             for name in _environment_reads(f)}
    assert "RANK" in reads and "MASTER_PORT" in reads  # the scan sees what it should
    strays = {name: str(where) for name, where in reads.items()
              if name not in PLUMBING or name.removeprefix("ADT_") in settings}
    assert strays == {}, strays

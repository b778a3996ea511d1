"""The house rules of the code layout, checked on the source (issue 14): imports run
`service -> explain -> models`, nothing that runs per request imports the offline rooms, no module
imports another's private names, and files and functions stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "models", "explain", "benchmarks")
OFFLINE = (  # fit, evaluate, measure: never per request
    "models.fitting",
    "explain.faithfulness",
    "explain.composites",
    "explain.offcentre",
    "explain.localisation",
    "explain.sanity",
    "benchmarks",
)
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
SIZE_REASON = "# size:"  # a file over the limit says why in its first lines


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return found


def _room(module: str) -> str:
    return module.split(".")[0]


def _is_offline(module: str) -> bool:
    return any(module == o or module.startswith(o + ".") for o in OFFLINE)


def _is_cli(module: str) -> bool:
    return module == "service.cli" or module.startswith("service.cli.")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_service_explain_models(module: str) -> None:
    allowed = {"models": {"models"}, "explain": {"models", "explain"}}.get(_room(module))
    if allowed is None:
        return  # service and benchmarks may import every room
    wrong = [m for m, _ in _imports(MODULES[module]) if _room(m) in PACKAGES and _room(m) not in allowed]
    assert not wrong, f"{module} imports {wrong}: imports run service -> explain -> models"


ROOMS = {  # models room -> the models rooms it may import (fitting and models/photos.py: any)
    "backends": {"backends", "embedded"},
    "embedded": {"backends", "embedded"},
    "knowledge": {"knowledge"},
    "scoring": {"backends", "knowledge", "scoring"},
    "uncertainty": {"backends", "knowledge", "uncertainty"},
}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[:2][-1] in ROOMS and _room(m) == "models"))
def test_model_rooms_import_only_what_their_docstring_allows(module: str) -> None:
    allowed = ROOMS[module.split(".")[1]]
    wrong = [m for m, _ in _imports(MODULES[module]) if m.startswith("models.") and m.split(".")[1] not in allowed]
    assert not wrong, f"{module} imports {wrong}; its room may import {sorted(allowed)}"


# The case database's room (issue 18) sits below the routes and the runtime: it may import these only.
STORE_MAY_IMPORT = (
    "service.store",
    "service.metrics",
    "service.problems",
    "service.schemas",
    "service.settings",
    "service.cds_hooks.state",
    "models.knowledge",
)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m == "service.store" or m.startswith("service.store.")))
def test_store_room_sits_below_routes_and_runtime(module: str) -> None:
    wrong = [
        m
        for m, _ in _imports(MODULES[module])
        if _room(m) in PACKAGES and not any(m == a or m.startswith(a + ".") for a in STORE_MAY_IMPORT)
    ]
    assert not wrong, f"{module} imports {wrong}; service/store may import {STORE_MAY_IMPORT}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _is_offline(m) and not _is_cli(m)))
def test_runtime_never_imports_the_offline_rooms(module: str) -> None:
    """Only the CLI (which runs fitting commands) and the offline rooms themselves reach fitting code."""
    wrong = [m for m, _ in _imports(MODULES[module]) if _is_offline(m)]
    assert not wrong, f"{module} runs per request but imports {wrong}"


def test_serving_app_loads_no_offline_module() -> None:
    """The same rule, measured: building the served app imports nothing from the offline rooms."""
    code = (
        "import sys; from service.app import create_app; from service.cli import main; "
        f"print(','.join(sorted(m for m in sys.modules if m.startswith({OFFLINE!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"loaded at serve time: {out.stdout.strip()}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_another_modules_private_names(module: str) -> None:
    wrong = [
        f"{m}.{name}"
        for m, names in _imports(MODULES[module])
        if _room(m) in PACKAGES and m != module
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, f"{module} imports private names {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_stay_small(module: str) -> None:
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines > MAX_FILE_LINES:
        head = "\n".join(text.splitlines()[:12])
        assert SIZE_REASON in head, f"{path.name} has {lines} lines: split it or give a one-line `{SIZE_REASON}` reason"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name} is {length} lines"


@pytest.mark.parametrize("package", [*(REPO / "models").rglob("__init__.py"), REPO / "explain" / "__init__.py"])
def test_every_room_says_its_job(package: Path) -> None:
    doc = ast.get_docstring(ast.parse(package.read_text(encoding="utf-8")))
    assert doc, f"{package.relative_to(REPO)} needs a docstring saying its job and what it may import"

"""The architecture is enforced, not hoped for: import contracts and lint run with the tests."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _tool(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_import_contracts():
    proc = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_qt_bridge_uses_qtcore_only():
    """import-linter sees PySide6 as one package; this pins the bridge to QtCore."""
    tree = ast.parse((ROOT / "core" / "engine" / "qt_bridge.py").read_text())
    qt = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("PySide6")}
    qt |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name.startswith("PySide6")}
    assert qt == {"PySide6.QtCore"}


def test_layers_contract_breaks_on_an_inverted_import(tmp_path):
    """The layers contract is not vacuous: a copy of the tree where the bottom layer imports the
    top one (runtime -> engine) must fail it, naming the contract."""
    for pkg in ("core", "app"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    cancel = tmp_path / "core" / "runtime" / "cancel.py"
    cancel.write_text(cancel.read_text() + "\nimport core.engine.jobs  # noqa: E402,F401  (deliberately inverted)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode != 0, proc.stdout
    assert "core is layered" in proc.stdout and "BROKEN" in proc.stdout
    assert "core.runtime.cancel -> core.engine.jobs" in proc.stdout


#: A front-end module beyond this many lines holds more than one concern (issue 26: the controller,
#: the main window and the gallery had grown to 700-1,000): split it along its seams.
FRONT_END_LIMIT = 500


def test_no_front_end_module_passes_500_lines():
    big = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "app").rglob("*.py"))
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > FRONT_END_LIMIT}
    assert big == {}, f"front-end modules over {FRONT_END_LIMIT} lines: {big}"

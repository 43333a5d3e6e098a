"""The e2e tests run tests/e2e/*_run.py as `python SCRIPT`, so those scripts see
only their own folder on sys.path (not the repository root that pytest adds).
Every sibling module a script imports must import there: a helper that pulls in
`benchmarks` broke 5 e2e tests in CI with ModuleNotFoundError."""

import ast
import pathlib
import subprocess
import sys

import pytest

E2E = pathlib.Path(__file__).resolve().parents[1] / "e2e"
SCRIPTS = sorted(E2E.glob("*_run.py"))


def _sibling_imports(script: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
    return {n for n in names if (E2E / f"{n}.py").exists()}


def test_there_are_scripts_and_they_import_siblings():
    assert SCRIPTS, "no tests/e2e/*_run.py found"
    assert any(_sibling_imports(s) for s in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sibling_modules_import_with_only_the_script_folder_on_path(script, tmp_path):
    modules = sorted(_sibling_imports(script))
    if not modules:
        pytest.skip(f"{script.name} imports no sibling module")
    # -I: no PYTHONPATH, no cwd or script folder on sys.path; then exactly what
    # `python SCRIPT` adds: the script's folder. cwd elsewhere, as in CI.
    code = (f"import sys; sys.path.insert(0, {str(E2E)!r}); "
            + "; ".join(f"import {m}" for m in modules))
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script.name}: importing {modules} failed:\n{proc.stderr}"

"""Repository rules: the model code travels alone, and CI runs the README's test command."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED_THIRD_PARTY = {"torch", "transformers"}


def _imported_modules(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, relative level) of every import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def test_modeling_imports_only_torch_transformers_and_itself():
    files = sorted((REPO / "modeling").glob("*.py"))
    assert {p.name for p in files} >= {"configuration_megfm.py", "modeling_megfm.py"}
    local = {p.stem for p in files}
    offending = []
    for path in files:
        for line, module, level in _imported_modules(path):
            top = module.split(".")[0]
            if level > 0:
                ok = top in local or (top == "" and path.name == "__init__.py")
            else:
                ok = top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names
            if not ok:
                offending.append(f"{path.name}:{line} imports {'.' * level}{module}")
    assert not offending, (
        "modeling/ must import only the standard library, torch and transformers: "
        + "; ".join(offending)
    )


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, flags=re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines, f".ci/run does not run the README's test command: {command}"


def test_every_subpackage_is_packaged():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packaged = set(setuptools["packages"])
    found = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "megfm_hf").rglob("__init__.py")
    }
    missing = sorted(found - packaged)
    assert not missing, f"pyproject.toml [tool.setuptools] packages leaves out {missing}"
    for package, folder in setuptools["package-dir"].items():
        assert package in packaged and (REPO / folder / "__init__.py").is_file(), package

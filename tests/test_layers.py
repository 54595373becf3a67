"""The layers' import contracts (pyproject.toml, README Layout) hold, and a forbidden import
breaks them: the contracts are checked, not decorative. The tests have a layout too: what test
modules share lives in conftest.py and helpers.py, and no test module imports another."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "store", "model", "api", "worker", "captioner")
LINT = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"]
TESTS = ROOT / "tests"
SHARED = {"conftest.py", "helpers.py"}  # the one place for what test modules share
NOT_TESTS = SHARED | {"__init__.py"}


def lint(folder: Path) -> subprocess.CompletedProcess:
    """lint-imports on the packages in `folder` (they come first on the import path)."""
    return subprocess.run(
        LINT,
        cwd=folder,
        env={"PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/settings.py", "import store.db", "Layers"),
        ("store/jobs.py", "import captioner.cli", "Layers"),
        ("api/routes/jobs.py", "import worker.tasks", "Layers"),
        ("worker/tasks.py", "import api.routes.jobs", "Layers"),
        ("model/data.py", "import store.db", "Layers"),
        ("api/routes/jobs.py", "import model.images", "never loads TensorFlow"),
        ("store/jobs.py", "import tensorflow", "never loads TensorFlow"),
        ("model/data.py", "import celery", "knows nothing of HTTP"),
        ("worker/inference.py", "import sqlalchemy", "only door"),
        ("worker/training.py", "import worker.inference", "roles"),
        ("store/tables.py", "import store.jobs", "No import cycles"),
        ("api/routes/batches.py", "import api.routes.jobs", "route modules never import"),
        ("api/schemas/jobs.py", "import api.contract", "schemas are its bottom"),
        ("api/schemas/base.py", "import api.submissions", "schemas are its bottom"),
        ("captioner/cli.py", "import harness.stack", "harness"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, broken):
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as source:
        source.write(f"\n{line}  # forbidden\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert broken in done.stdout.split("Broken contracts")[1], done.stdout


def test_the_schemas_contract_names_every_other_module_of_the_api():
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (bottom,) = [c for c in contracts["contracts"] if c.get("source_modules") == ["api.schemas"]]
    others = {f"api.{p.stem}" for p in (ROOT / "api").glob("*.py") if p.stem != "__init__"}
    others |= {f"api.{p.name}" for p in (ROOT / "api").iterdir() if (p / "__init__.py").exists()}
    assert set(bottom["forbidden_modules"]) == others - {"api.schemas"}


def test_the_api_builds_and_routes_without_loading_tensorflow(tmp_path):
    code = f"""
import sys
from api import create_app
from core.settings import from_env
app = create_app(from_env({{"CAPTIONER_DATA_DIR": {str(tmp_path)!r}}}))
assert app.test_client().get("/healthz").status_code == 200
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "keras", "model"}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def imported_test_modules(path: Path) -> list[str]:
    """The test modules (tests/test_*.py) that the Python file `path` imports, however spelt:
    `tests.test_x`, `from tests import test_x`, `test_x` (pytest puts tests/ on the path) or
    relative; at any depth (in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names |= {base} | {f"{base.rstrip('.')}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        parts = name.lstrip(".").split(".")
        if parts[0] == "tests":
            parts = parts[1:]
        elif not name.startswith(".") and not (path.parent / f"{parts[0]}.py").exists():
            continue  # another package's module, not one of tests/
        if parts and parts[0].startswith("test_"):
            found.add(parts[0])
    return sorted(found)


def test_no_test_module_imports_another():
    importing = {
        path.name: imported
        for path in sorted(TESTS.glob("test_*.py"))
        if (imported := imported_test_modules(path))
    }
    assert importing == {}, "move what they share to tests/helpers.py or tests/conftest.py"


@pytest.mark.parametrize(
    "line",
    [
        "from tests.test_client import STANDIN_WORDS",
        "import tests.test_client",
        "from tests import test_client",
        "from test_client import STANDIN_WORDS",
        "from .test_client import STANDIN_WORDS",
        "def f():\n    from tests.test_client import client_stack",
    ],
)
def test_an_import_of_another_test_module_is_found(tmp_path, line):
    (tmp_path / "test_client.py").write_text("")
    (tmp_path / "test_other.py").write_text(f"import pytest\nimport tests.helpers\n{line}\n")
    assert imported_test_modules(tmp_path / "test_other.py") == ["test_client"]


def test_shared_test_code_lives_in_conftest_and_helpers():
    assert {p.name for p in TESTS.glob("*.py") if not p.name.startswith("test_")} == NOT_TESTS
    plugins = [  # fixtures come from conftest.py, never from a module loaded as a plugin
        path.name
        for path in sorted(TESTS.glob("*.py"))
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign)
        and any(getattr(target, "id", None) == "pytest_plugins" for target in node.targets)
    ]
    assert plugins == []

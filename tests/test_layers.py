"""The layers' import contracts (pyproject.toml, README Layout) hold, and a forbidden import
breaks them: the contracts are checked, not decorative."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "store", "model", "api", "worker", "captioner")
LINT = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"]


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
        ("api/jobs.py", "import worker.tasks", "Layers"),
        ("worker/tasks.py", "import api.routes.jobs", "Layers"),
        ("model/data.py", "import store.db", "Layers"),
        ("api/jobs.py", "import model.images", "never loads TensorFlow"),
        ("store/jobs.py", "import tensorflow", "never loads TensorFlow"),
        ("model/data.py", "import celery", "knows nothing of HTTP"),
        ("worker/inference.py", "import sqlalchemy", "only door"),
        ("worker/training.py", "import worker.inference", "roles"),
        ("store/tables.py", "import store.jobs", "No import cycles"),
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

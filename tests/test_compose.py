"""Static checks of the container set-up: docker-compose.yml and the Dockerfile (no Docker)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator, validators

from core.settings import REQUIRED_IN_PRODUCTION
from harness.stack import dockerfile_instructions

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"

APP_IMAGE = "captioner:latest"
APP_SERVICES = {"migrate", "api", "worker-gpu", "worker-training", "worker-webhooks", "beat"}
EXPECTED_SERVICES = APP_SERVICES | {"postgres", "redis", "minio", "minio-init", "flower"}


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml with YAML anchors and merge keys resolved."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def app_services(services: dict) -> dict:
    """Services that run the captioner image (built here or referenced by tag)."""
    return {
        name: spec
        for name, spec in services.items()
        if spec.get("image") == APP_IMAGE or "build" in spec
    }


def environment(spec: dict) -> dict[str, str | None]:
    """A service's environment as a mapping, whether written as a mapping or KEY=VALUE list."""
    env = spec.get("environment") or {}
    if isinstance(env, dict):
        return {key: None if value is None else str(value) for key, value in env.items()}
    pairs = {}
    for item in env:
        key, sep, value = item.partition("=")
        pairs[key] = value if sep else None  # a bare KEY is passed through from the host
    return pairs


def test_environment_helper_accepts_both_forms():
    assert environment({"environment": {"A": "1", "B": 2}}) == {"A": "1", "B": "2"}
    assert environment({"environment": ["A=1", "B=x=y", "C"]}) == {"A": "1", "B": "x=y", "C": None}
    assert environment({}) == {}


@pytest.mark.parametrize("which", ["draft7", "declared"])
def test_compose_file_matches_the_compose_specification(compose, schema, which):
    cls = Draft7Validator if which == "draft7" else validators.validator_for(schema)
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_vendored_schema_is_the_compose_specification(schema):
    assert schema["title"] == "Compose Specification"
    assert {"service", "deployment", "devices", "healthcheck"} <= set(schema["definitions"])


def test_no_obsolete_version_key(compose):
    assert "version" not in compose


def test_expected_services_exist(services):
    assert EXPECTED_SERVICES <= set(services)
    assert set(app_services(services)) == APP_SERVICES


def test_app_services_share_image_and_build(services):
    for name, spec in app_services(services).items():
        assert spec["image"] == APP_IMAGE, name
        assert spec["build"]["context"] == ".", name
        assert "TF_EXTRA" in spec["build"]["args"], name


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_services_have_the_production_settings(services, name):
    env = environment(services[name])
    missing = [key for key in REQUIRED_IN_PRODUCTION if not env.get(key)]
    assert not missing, f"{name} lacks {missing}"
    assert env["DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert env["BROKER_URL"].startswith("redis://redis:6379/")
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"


def test_app_services_share_one_environment(services):
    envs = {name: environment(spec) for name, spec in app_services(services).items()}
    first = next(iter(envs.values()))
    assert all(env == first for env in envs.values())


def test_s3_credentials_match_minio_root_user(services):
    minio = environment(services["minio"])
    for name, spec in app_services(services).items():
        env = environment(spec)
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"], name


def test_credentials_are_overridable(services):
    env = environment(services["api"])
    for key in ("DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert re.search(r"\$\{[A-Z_]+:-[^}]*\}", env[key]), key


def test_database_url_matches_postgres_service(services):
    pg = environment(services["postgres"])
    url = environment(services["api"])["DATABASE_URL"]
    expected = (
        f"postgresql+psycopg2://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert url == expected


def gpu_devices(spec: dict) -> list[dict]:
    deploy = spec.get("deploy") or {}
    return deploy.get("resources", {}).get("reservations", {}).get("devices", [])


@pytest.mark.parametrize("name", ["worker-gpu", "worker-training"])
def test_gpu_workers_reserve_an_nvidia_gpu(services, name):
    devices = gpu_devices(services[name])
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_inference_worker_can_be_scaled(services):
    spec = services["worker-gpu"]
    assert "container_name" not in spec
    assert not spec.get("ports"), "fixed host ports would clash between replicas"
    assert spec["command"] == ["captioner", "worker", "--queue", "inference", "--gpus", "all"]


def depends_on(spec: dict) -> dict:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def test_api_waits_for_migrations_and_bucket(services):
    deps = depends_on(services["api"])
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert "redis" in deps


def test_one_shot_services_do_not_restart(services):
    for name in ("migrate", "minio-init"):
        assert services[name]["restart"] == "no", name
    assert services["migrate"]["command"] == ["captioner", "migrate"]
    assert depends_on(services["migrate"])["postgres"]["condition"] == "service_healthy"


def test_every_dependency_is_a_defined_service(services):
    for name, spec in services.items():
        assert set(depends_on(spec)) <= set(services), name


def test_dependencies_with_service_healthy_have_a_healthcheck(services):
    for name, spec in services.items():
        for dep, rule in depends_on(spec).items():
            if rule.get("condition") == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name} -> {dep}"


def test_api_runs_gunicorn_on_port_8000(services):
    api = services["api"]
    assert api["command"][0] == "gunicorn"
    assert "api:create_app()" in api["command"]
    assert any(str(port).endswith(":8000") for port in api["ports"])


def test_worker_queues(services):
    for name, queue in [
        ("worker-gpu", "inference"),
        ("worker-training", "training"),
        ("worker-webhooks", "webhooks"),
    ]:
        command = services[name]["command"]
        assert command[:2] == ["captioner", "worker"], name
        assert command[command.index("--queue") + 1] == queue, name
    assert services["beat"]["command"] == ["captioner", "beat"]


def test_dockerfile_installs_with_tf_extra_and_exposes_8000():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    args = [a for i, a in instructions if i == "ARG"]
    assert "TF_EXTRA=gpu" in args
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert 'pip install --no-cache-dir ".[${TF_EXTRA}]"' in runs
    assert ("EXPOSE", "8000") in instructions
    assert ("WORKDIR", "/app") in instructions
    user = [a for i, a in instructions if i == "USER"]
    assert user and user[-1] not in ("root", "0")
    healthcheck = " ".join(a for i, a in instructions if i == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    cmd = json.loads(next(a for i, a in instructions if i == "CMD"))
    assert cmd[0] == "gunicorn" and "api:create_app()" in cmd


def test_dockerfile_copies_the_application_and_only_that():
    copied = [src for i, a in dockerfile_instructions() if i == "COPY" for src in a.split()[:-1]]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {
        f"{name.rstrip('*')}/"
        for name in project["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= set(copied)  # every package the project installs
    # client/: the light client, a distribution of its own that the image installs beside it
    others = {"pyproject.toml", "README.md", "alembic.ini", "migrations/", "client/"}
    assert set(copied) <= packages | others


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    for entry in (".venv", "data", "captioner-data", ".git", "tests", "benchmarks", "dev"):
        assert entry in ignored, entry
    assert {"__pycache__", "**/__pycache__"} & ignored


def test_the_wheel_carries_the_service_and_no_test_scaffolding(tmp_path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = [
        name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    for name in [*packages, "dev", "tests", "benchmarks"]:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run(
        [*wheel, "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    (built,) = tmp_path.glob("captioner-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(built).namelist()}
    assert set(packages) <= tops
    assert not tops & {"harness", "dev", "tests", "benchmarks"}, tops

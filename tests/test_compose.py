"""Static checks of the container set-up: docker-compose.yml, its CPU override
docker-compose.cpu.yml (merged here by Compose's rules) and the Dockerfile (no Docker)."""

from __future__ import annotations

import json
import re
import shlex
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
CPU_FILE = ROOT / "docker-compose.cpu.yml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

APP_IMAGE = f"captioner:{PROJECT['version']}"  # the image is tagged with the release it holds
CPU_IMAGE = f"{APP_IMAGE}-cpu"
APP_SERVICES = {"migrate", "api", "worker-gpu", "worker-training", "worker-webhooks", "beat"}
EXPECTED_SERVICES = APP_SERVICES | {"postgres", "redis", "minio", "minio-init", "flower"}
# Every role the stack runs, and how its service is known.
ROLES = {
    "api": lambda spec: spec.get("command", [""])[0] == "gunicorn",
    "inference worker": lambda spec: queue(spec) == "inference",
    "training worker": lambda spec: queue(spec) == "training",
    "webhooks worker": lambda spec: queue(spec) == "webhooks",
    "beat": lambda spec: spec.get("command") == ["captioner", "beat"],
    "migrate": lambda spec: spec.get("command") == ["captioner", "migrate"],
    "postgres": lambda spec: spec.get("image", "").startswith("postgres:"),
    "redis": lambda spec: spec.get("image", "").startswith("redis:"),
    "minio": lambda spec: spec.get("image", "").startswith("minio/minio:"),
}
METRICS_PORT = "9100"
# Sequences that a later Compose file replaces rather than extends (Compose's merge rules).
REPLACED = {"command", "entrypoint", "test"}


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it, with its `!reset` tag (the key is dropped from the files
    merged before)."""


RESET = object()
ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load_compose(path: Path) -> dict:
    """A Compose file with YAML anchors and merge keys resolved."""
    return yaml.load(path.read_text(encoding="utf-8"), ComposeLoader)


def merged(base, override, key: str = ""):
    """`override` merged onto `base` as `docker compose -f base -f override` does: mappings key
    by key, `!reset` drops the key, command/entrypoint/healthcheck test replaced, other
    sequences appended (enough for these files: none overrides ports or volumes)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for name, value in override.items():
            if value is RESET:
                out.pop(name, None)
            else:
                out[name] = merged(out[name], value, name) if name in out else value
        return out
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED:
        return base + override
    return override


def without_resets(node):
    """A file as Compose validates it alone: its `!reset` keys already dropped."""
    if isinstance(node, dict):
        return {k: without_resets(v) for k, v in node.items() if v is not RESET}
    if isinstance(node, list):
        return [without_resets(v) for v in node]
    return node


def queue(spec: dict) -> str | None:
    """The queue a worker service consumes, if it is one."""
    command = spec.get("command") or []
    if command[:2] != ["captioner", "worker"]:
        return None
    return command[command.index("--queue") + 1]


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml with YAML anchors and merge keys resolved."""
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def cpu_override() -> dict:
    """docker-compose.cpu.yml alone."""
    return load_compose(CPU_FILE)


@pytest.fixture(scope="module")
def cpu_compose(compose, cpu_override) -> dict:
    """docker-compose.yml with docker-compose.cpu.yml merged onto it."""
    return merged(compose, cpu_override)


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


def schema_errors(cls, schema: dict, document: dict) -> str:
    """Every place `document` breaks the schema, one a line (empty: none)."""
    errors = sorted(cls(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    return "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


@pytest.mark.parametrize("which", ["draft7", "declared"])
def test_compose_file_matches_the_compose_specification(compose, schema, which):
    cls = Draft7Validator if which == "draft7" else validators.validator_for(schema)
    cls.check_schema(schema)
    assert not (errors := schema_errors(cls, schema, compose)), errors


@pytest.mark.parametrize("which", ["override alone", "merged"])
def test_cpu_files_match_the_compose_specification(cpu_override, cpu_compose, schema, which):
    document = without_resets(cpu_override) if which == "override alone" else cpu_compose
    cls = validators.validator_for(schema)
    assert not (errors := schema_errors(cls, schema, document)), errors


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


@pytest.mark.parametrize("stack", ["compose", "cpu_compose"])
def test_every_role_runs(request, stack):
    services = request.getfixturevalue(stack)["services"]
    found = {
        role: [n for n, spec in services.items() if is_it(spec)] for role, is_it in ROLES.items()
    }
    assert all(len(names) == 1 for names in found.values()), found


def test_the_cpu_stack_reserves_no_gpu_and_builds_the_cpu_image(cpu_compose):
    services = cpu_compose["services"]
    for name, spec in services.items():
        assert not gpu_devices(spec), name
        assert "nvidia" not in json.dumps(spec).lower(), name  # no runtime, driver or variable
    assert set(app_services(services)) == APP_SERVICES
    for name, spec in app_services(services).items():
        assert spec["build"] == {"context": ".", "args": {"TF_EXTRA": "cpu"}}, name
        assert spec["image"] == CPU_IMAGE, name  # a CPU build never replaces the GPU image
    assert "cpu" in PROJECT["optional-dependencies"]  # the extra the Dockerfile installs
    assert "TF_EXTRA=gpu" in [a for i, a in dockerfile_instructions() if i == "ARG"]


def test_the_cpu_override_changes_nothing_but_the_image_and_the_gpu(compose, cpu_compose):
    assert cpu_compose["services"].keys() == compose["services"].keys()
    for name, spec in compose["services"].items():
        cpu = cpu_compose["services"][name]
        changed = {k for k in spec.keys() | cpu.keys() if spec.get(k) != cpu.get(k)}
        assert changed <= {"build", "image", "deploy"}, (name, changed)

    def top(document: dict) -> dict:
        return {k: v for k, v in document.items() if k != "services" and not k.startswith("x-")}

    assert top(cpu_compose) == top(compose)


def test_the_merge_follows_composes_rules():
    """The merge the CPU tests read: !reset drops, mappings merge, commands are replaced."""
    base = {"a": {"x": 1, "y": [1]}, "command": ["a"], "deploy": {"r": 1}}
    override = {"a": {"x": 2, "y": [2]}, "command": ["b"], "deploy": RESET}
    assert merged(base, override) == {"a": {"x": 2, "y": [1, 2]}, "command": ["b"]}
    assert yaml.load("k: !reset {}", ComposeLoader) == {"k": RESET}


def pinned(image: str) -> bool:
    """True for an image named with a tag other than `latest`, or with a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


@pytest.mark.parametrize(
    "image, ok",
    [
        ("minio/minio", False),
        ("captioner:latest", False),
        ("registry:5000/captioner", False),
        ("minio/minio:RELEASE.2025-09-07T16-13-09Z", True),
        ("registry:5000/captioner:0.1.0", True),
        ("redis@sha256:" + "0" * 64, True),
    ],
)
def test_pinned_tells_a_pinned_image(image, ok):
    assert pinned(image) is ok


@pytest.mark.parametrize("stack", ["compose", "cpu_compose"])
def test_every_image_is_pinned(request, stack):
    services = request.getfixturevalue(stack)["services"]
    images = {name: spec["image"] for name, spec in services.items()}
    assert all(pinned(image) for image in images.values()), images
    assert APP_IMAGE in images.values() or CPU_IMAGE in images.values()


def test_the_secret_keys_message_says_how_to_make_one(services, tmp_path):
    """Compose stops with the message while CAPTIONER_SECRET_KEYS is unset or empty; the
    command in it appends a key to .env that the service accepts."""
    from core.credentials import Cipher

    value = environment(services["api"])["CAPTIONER_SECRET_KEYS"]
    match = re.fullmatch(r"\$\{CAPTIONER_SECRET_KEYS:\?([^{}$\n]+)\}", value)
    assert match, value  # one line, no braces or $: Compose would end or expand the message there
    message = match.group(1)
    command = message.split("run: ", 1)[1]
    assert command.startswith("python3 -c ") and command.endswith(" >> .env")
    runnable = shlex.quote(sys.executable) + command.removeprefix("python3")
    subprocess.run(["bash", "-c", runnable], cwd=tmp_path, check=True, timeout=30)
    name, _, key = (tmp_path / ".env").read_text().strip().partition("=")
    assert name == "CAPTIONER_SECRET_KEYS"
    cipher = Cipher(key)  # a Fernet key: SettingsError otherwise
    assert cipher.decrypt(cipher.encrypt("whsec_x")) == "whsec_x"


def test_metrics_are_published_on_loopback_alone(services):
    for name, spec in app_services(services).items():
        assert environment(spec)["METRICS_PORT"] == METRICS_PORT, name
    published = [(n, str(p)) for n, spec in services.items() for p in spec.get("ports", [])]
    to_metrics = [(n, p) for n, p in published if p.endswith(f":{METRICS_PORT}")]
    assert [n for n, _ in to_metrics] == ["api"]  # the workers' stay inside the network
    assert all(p.startswith("127.0.0.1:") for _, p in to_metrics), to_metrics
    instructions = dockerfile_instructions()
    assert ("EXPOSE", METRICS_PORT) in instructions
    env = " ".join(a for i, a in instructions if i == "ENV")
    assert f"METRICS_PORT={METRICS_PORT}" in env.split()


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

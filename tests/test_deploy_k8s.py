"""Static checks of the Kubernetes manifests in deploy/k8s (offline: no cluster, no kubectl)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator
from prometheus_client import Counter, Gauge, Histogram

from api.routes.metrics import FLEET
from core import metrics as core_metrics
from core.settings import KNOWN, REQUIRED_IN_PRODUCTION

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).resolve().parent / "data" / "keda"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = K8S / "grafana-dashboard.json"

K8S_VERSION = "1.33.0"  # one kubernetes-validate ships; managed clusters offer it
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
INFERENCE = "captioner-worker-inference"
READY_FILE = "/tmp/captioner/ready"
# Variables that are no setting of ours but read by libraries (prometheus_client, boto3).
STANDARD_ENV = {"PROMETHEUS_MULTIPROC_DIR"}
STANDARD_ENV_PREFIXES = ("AWS_",)
# Applied by hand, not by kustomization.yaml (see its comment).
NOT_IN_KUSTOMIZATION = {"secrets.example.yaml", "migrate-job.yaml"}

# The metric names the service exports (histograms also as _bucket, _sum, _count): every
# metric core.metrics defines, and the fleet's gauges api.routes.metrics reads at scrape time.
EXPORTED = [m for m in vars(core_metrics).values() if isinstance(m, Counter | Gauge | Histogram)]
HISTOGRAMS = {m._name for m in EXPORTED if isinstance(m, Histogram)}
METRICS = (
    HISTOGRAMS
    | {f"{m._name}_total" for m in EXPORTED if isinstance(m, Counter)}
    | {m._name for m in EXPORTED if isinstance(m, Gauge)}
    | set(FLEET)
)


def load_documents() -> list[tuple[str, dict]]:
    """Every object in deploy/k8s (kustomization.yaml is none), with its file name."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCUMENTS = load_documents()
# Kubernetes' own kinds; KEDA's are checked against its CRDs instead.
CORE_DOCUMENTS = [(n, d) for n, d in DOCUMENTS if not d["apiVersion"].startswith("keda.sh/")]


def by_kind(kind: str) -> dict[str, dict]:
    """The documents of one kind, by name."""
    return {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    """The pod spec of a Deployment or Job."""
    return doc["spec"]["template"]["spec"]


def containers(doc: dict) -> list[dict]:
    return pod_spec(doc)["containers"]


def workloads() -> list[dict]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] in {"Deployment", "Job"}]


def test_core_kinds_are_found():
    kinds = {doc["kind"] for _, doc in CORE_DOCUMENTS}
    expected = {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service"}
    assert expected | {"HorizontalPodAutoscaler"} <= kinds


@pytest.mark.parametrize(
    "name, doc",
    CORE_DOCUMENTS,
    ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in CORE_DOCUMENTS],
)
def test_core_documents_validate(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field():
    """The check above is not vacuous: a misspelt field fails."""
    doc = copy.deepcopy(by_kind("Deployment")[INFERENCE])
    pod_spec(doc)["terminationGracePeriod"] = 120
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def closed(schema: dict) -> dict:
    """A CRD schema where objects refuse unknown fields, as the API server's strict field
    validation does (structural schemas list every field; unlisted ones are pruned)."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def crd_schema(kind: str) -> dict:
    """The openAPIV3Schema of a vendored KEDA CRD's served version."""
    path = CRDS / f"keda.sh_{kind.lower()}s.yaml"
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert crd["spec"]["names"]["kind"] == kind
    version = next(v for v in crd["spec"]["versions"] if v["served"] and v["name"] == "v1alpha1")
    return closed(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("kind", ["ScaledObject", "TriggerAuthentication"])
def test_keda_objects_validate_against_the_crds(kind):
    objects = by_kind(kind)
    assert objects, f"no {kind} in deploy/k8s"
    validator = Draft7Validator(crd_schema(kind))
    for doc in objects.values():
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, errors


def test_crd_schema_rejects_an_unknown_field():
    doc = copy.deepcopy(next(iter(by_kind("ScaledObject").values())))
    doc["spec"]["minReplicas"] = 0
    assert not Draft7Validator(crd_schema("ScaledObject")).is_valid(doc)


def test_every_object_is_in_the_namespace():
    for name, doc in DOCUMENTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "captioner", (name, doc["kind"])


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - NOT_IN_KUSTOMIZATION
    assert kustomization["namespace"] == "captioner"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here")
def test_kustomization_builds():
    """`kubectl kustomize` (offline) renders it: the image renamed, the dashboard a ConfigMap."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    built = [doc for doc in yaml.safe_load_all(out) if doc]
    dashboards = [d for d in built if d["metadata"]["name"] == "captioner-grafana-dashboard"]
    assert json.loads(dashboards[0]["data"]["grafana-dashboard.json"])["uid"] == "captioner"
    images = {c["image"] for d in built if d["kind"] == "Deployment" for c in containers(d)}
    assert images == {f"registry.example.com/captioner:{VERSION}"}


def test_every_image_is_the_release_pinned():
    """Every container names the image with the project's version, and so does kustomize's
    rewrite (set it to the release deployed): never `latest`, never untagged."""
    images = {c["image"] for doc in workloads() for c in containers(doc)}
    assert images == {f"captioner:{VERSION}"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    (rewrite,) = kustomization["images"]
    assert (rewrite["name"], rewrite["newTag"]) == ("captioner", VERSION)


def test_inference_worker_has_a_gpu_a_long_grace_period_and_a_readiness_file():
    worker = by_kind("Deployment")[INFERENCE]
    spec = pod_spec(worker)
    (container,) = spec["containers"]
    assert container["command"] == ["captioner", "worker", "--queue", "inference"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["terminationGracePeriodSeconds"] > 90
    assert container["readinessProbe"]["exec"]["command"] == ["test", "-f", READY_FILE]
    startup = container["startupProbe"]
    assert startup["exec"]["command"] == ["test", "-f", READY_FILE]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a first model load
    assert "replicas" not in worker["spec"], "KEDA owns the inference workers' count"
    config = by_kind("ConfigMap")["captioner-config"]["data"]
    assert config["READY_FILE"] == READY_FILE


def test_training_worker_is_one_gpu_pod():
    worker = by_kind("Deployment")["captioner-worker-training"]
    assert worker["spec"]["replicas"] == 1
    (container,) = containers(worker)
    assert container["command"] == ["captioner", "worker", "--queue", "training"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 120


def test_webhook_workers_need_no_gpu():
    worker = by_kind("Deployment")["captioner-worker-webhooks"]
    assert worker["spec"]["replicas"] == 2
    (container,) = containers(worker)
    assert container["command"] == ["captioner", "worker", "--queue", "webhooks"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_beat_is_exactly_one():
    beat = by_kind("Deployment")["captioner-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert containers(beat)[0]["command"] == ["captioner", "beat"]


def test_migrate_job_runs_the_migration():
    job = by_kind("Job")["captioner-migrate"]
    assert containers(job)[0]["command"] == ["captioner", "migrate"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_scaled_object_targets_the_inference_workers_on_queued_and_running_jobs():
    (scaled,) = by_kind("ScaledObject").values()
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == INFERENCE
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 8)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"
    query = " ".join(trigger["metadata"]["query"].split())
    assert re.fullmatch(
        r"SELECT count\(\*\) FROM jobs WHERE status IN \('queued', 'running'\)", query
    ), query
    assert int(trigger["metadata"]["targetQueryValue"]) > 0
    assert trigger["metadata"]["activationTargetQueryValue"] == "0"
    auth = by_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "connection"
    assert ref["key"] in by_kind("Secret")[ref["name"]]["stringData"]


def test_api_command_is_the_dockerfiles_cmd():
    cmd_lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("CMD ")
    ]
    cmd = json.loads(cmd_lines[-1].removeprefix("CMD "))
    api = by_kind("Deployment")["captioner-api"]
    (container,) = containers(api)
    assert container["command"] == cmd
    assert pod_spec(api)["terminationGracePeriodSeconds"] > 75  # gunicorn's graceful_timeout


def test_api_service_and_autoscaler():
    service = by_kind("Service")["captioner-api"]
    (port,) = service["spec"]["ports"]  # the API alone: no metrics port
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert not any(
        k.startswith("prometheus.io/") for k in service["metadata"].get("annotations", {})
    )
    hpa = by_kind("HorizontalPodAutoscaler")["captioner-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "captioner-api"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    (metric,) = hpa["metrics"]
    assert metric["resource"]["target"]["averageUtilization"] == 70


def test_metrics_are_scraped_on_the_metrics_port_which_no_service_exposes():
    """The API's pods, like the workers', are scraped on METRICS_PORT (gunicorn listens there
    beside 8000, whose /metrics answers 404); Services expose the API's port alone."""
    port = int(by_kind("ConfigMap")["captioner-config"]["data"]["METRICS_PORT"])
    scraped = {}
    for name, doc in by_kind("Deployment").items():
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            (container,) = containers(doc)
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert ports["metrics"] == port == int(annotations["prometheus.io/port"]), name
            assert annotations["prometheus.io/path"] == "/metrics"
            scraped[name] = ports
    workers = {f"captioner-worker-{role}" for role in ("inference", "training", "webhooks")}
    assert set(scraped) == {"captioner-api"} | workers  # beat serves none
    assert scraped["captioner-api"] == {"http": 8000, "metrics": port}
    for service in by_kind("Service").values():
        for exposed in service["spec"]["ports"]:
            assert exposed["targetPort"] not in ("metrics", port), service["metadata"]["name"]


def test_pods_run_as_the_images_user():
    for doc in workloads():
        security = pod_spec(doc)["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
        for container in containers(doc):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def env_sources() -> dict[str, set[str]]:
    """Every environment variable name a container gets, with where it comes from."""
    maps = {("ConfigMap", name): doc.get("data", {}) for name, doc in by_kind("ConfigMap").items()}
    maps |= {("Secret", name): doc.get("stringData", {}) for name, doc in by_kind("Secret").items()}
    names: dict[str, set[str]] = {}
    for doc in workloads():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for container in containers(doc):
            for var in container.get("env", []):
                names.setdefault(var["name"], set()).add(where)
            for source in container.get("envFrom", []):
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                ref = source.get("configMapRef") or source["secretRef"]
                assert (kind, ref["name"]) in maps, f"{where}: no {kind} {ref['name']}"
                for key in maps[kind, ref["name"]]:
                    names.setdefault(key, set()).add(f"{where} via {kind}/{ref['name']}")
    return names


def test_every_env_name_is_a_setting():
    unknown = {
        name: sorted(where)
        for name, where in env_sources().items()
        if name not in KNOWN
        and name not in STANDARD_ENV
        and not name.startswith(STANDARD_ENV_PREFIXES)
    }
    assert not unknown, unknown


def test_every_app_container_gets_the_required_settings():
    names = env_sources()
    for var in REQUIRED_IN_PRODUCTION:
        where = {w.split(" ")[0] for w in names.get(var, set())}
        expected = {f"{d['kind']}/{d['metadata']['name']}" for d in workloads()}
        assert where == expected, var


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
        for inner in panel.get("panels", []):
            exprs += [target["expr"] for target in inner.get("targets", [])]
    return exprs


def test_dashboard_queries_only_known_metrics():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    used = set()
    for expr in dashboard_queries(dashboard):
        for name in re.findall(r"\bcaptioner_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if base in HISTOGRAMS else name)
    assert used - METRICS == set()
    assert METRICS - used == set(), "every metric has a panel"

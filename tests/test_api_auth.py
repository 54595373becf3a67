"""Keys and tenants on every route, the table built from the app's URL map: 401 without a valid
key, 403 without the scope, and another tenant's ids answered exactly like missing ones."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from api.auth import ANY_KEY, PUBLIC, required_scope
from core.archives import pack_dataset
from harness.stack import admin_key
from model.shapes import write_shapes_dataset
from store import api_keys, registry
from tests.helpers import b64, png, succeeded_job

# Every route and what it needs; a route the app has and this table lacks fails the test.
SCOPES = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # Prometheus scrapes it; no tenant's data in it
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs/"): PUBLIC,
    ("GET", "/docs/<path:path>"): PUBLIC,  # Swagger UI's files
    ("GET", "/"): PUBLIC,  # the web page: its scripts call the API with the user's key
    ("GET", "/training"): PUBLIC,
    ("GET", "/web/<path:filename>"): PUBLIC,  # the pages' scripts and styles
    ("POST", "/v1/jobs"): "jobs",
    ("GET", "/v1/jobs"): "jobs",
    ("GET", "/v1/jobs/<uuid:job_id>"): "jobs",
    ("POST", "/v1/jobs/<uuid:job_id>/cancel"): "jobs",
    ("DELETE", "/v1/jobs/<uuid:job_id>"): "jobs",
    ("GET", "/v1/jobs/<uuid:job_id>/attention"): "jobs",
    ("GET", "/v1/jobs/<uuid:job_id>/attention.png"): "jobs",
    ("GET", "/v1/jobs/<uuid:job_id>/deliveries"): "jobs",
    ("POST", "/v1/jobs/<uuid:job_id>/feedback"): "jobs",
    ("GET", "/v1/feedback"): "jobs",
    ("GET", "/v1/feedback/<uuid:feedback_id>"): "jobs",
    ("DELETE", "/v1/feedback/<uuid:feedback_id>"): "jobs",
    ("POST", "/v1/batches"): "jobs",
    ("GET", "/v1/batches/<uuid:batch_id>"): "jobs",
    ("DELETE", "/v1/batches/<uuid:batch_id>"): "jobs",
    ("GET", "/v1/batches/<uuid:batch_id>/deliveries"): "jobs",
    ("GET", "/v1/webhooks/secret"): "jobs",
    ("POST", "/v1/webhooks/secret/rotate"): "jobs",
    ("GET", "/v1/deliveries/<uuid:delivery_id>"): "jobs",
    ("POST", "/v1/deliveries/<uuid:delivery_id>/replay"): "jobs",
    ("POST", "/v1/datasets"): "training",
    ("GET", "/v1/datasets"): "training",
    ("GET", "/v1/datasets/<uuid:dataset_id>"): "training",
    ("DELETE", "/v1/datasets/<uuid:dataset_id>"): "training",
    ("POST", "/v1/training-runs"): "training",
    ("GET", "/v1/training-runs"): "training",
    ("GET", "/v1/training-runs/<uuid:run_id>"): "training",
    ("POST", "/v1/training-runs/<uuid:run_id>/cancel"): "training",
    ("GET", "/v1/training-runs/<uuid:run_id>/deliveries"): "training",
    ("GET", "/v1/training-runs/<uuid:run_id>/curves"): "training",
    ("GET", "/v1/training-runs/<uuid:run_id>/curves.png"): "training",
    ("GET", "/v1/models"): ANY_KEY,
    ("GET", "/v1/models/<name>"): ANY_KEY,
    ("POST", "/v1/models/<name>/promote"): "admin",
    ("GET", "/v1/workers"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("GET", "/v1/keys/<uuid:key_id>"): "admin",
    ("DELETE", "/v1/keys/<uuid:key_id>"): "admin",
}
# Routes whose ids belong to a tenant (the registry and keys are shared, or admin's).
TENANT_IDS = ("job_id", "batch_id", "delivery_id", "dataset_id", "run_id", "feedback_id")
HOOK = "http://127.0.0.1:9/hook"  # never called: no webhook worker runs here


def routes(app) -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) for every route of the app."""
    return sorted(
        (method, rule.rule, rule.endpoint)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keys(app) -> dict[str, str]:
    """Keys of tenant B (all scopes, or one missing), for the checks."""
    db = app.extensions["captioner"].db
    with db.session() as session:
        made = {
            name: api_keys.create_key(session, tenant, scopes)[1]
            for name, tenant, scopes in [
                ("b", "tenant-b", ["jobs", "training", "admin"]),
                ("jobs", "tenant-b", ["jobs"]),
                ("training", "tenant-b", ["training"]),
                ("admin", "tenant-b", ["jobs", "training"]),  # all but admin
            ]
        }
    return made


@pytest.fixture(scope="module")
def owned(app, api_key, tmp_path_factory) -> dict[str, str]:
    """One of everything, owned by tenant A (the `api_key` fixture's tenant): parameter → id."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    job = client.post(
        "/v1/jobs", json={"image": b64(png()), "webhook": HOOK, "webhook_events": ["completed"]}
    ).get_json()
    client.post(f"/v1/jobs/{job['id']}/cancel")  # a canceled job's webhook: a delivery
    batch = client.post("/v1/batches", json={"images": [b64(png())]}).get_json()
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(folder, 6, seed=1, val_fraction=0.34)
    archive = pack_dataset(folder, folder.with_suffix(".zip")).read_bytes()
    dataset = client.post("/v1/datasets", data=archive, content_type="application/zip").get_json()
    run = client.post(
        "/v1/training-runs", json={"dataset": {"type": "shapes", "size": 20}, "promotion": "never"}
    ).get_json()
    delivery = client.get(f"/v1/jobs/{job['id']}/deliveries").get_json()["deliveries"][0]
    correction = client.post(
        f"/v1/jobs/{succeeded_job(app, None)}/feedback", json={"caption": "a cat"}
    ).get_json()
    with app.extensions["captioner"].db.session() as session:
        version = registry.register(
            session,
            registry.NewVersion(
                digest="d" * 64,
                encoder_weights="/srv/weights/encoder.h5",
                encoder_fingerprint="f" * 16,
                metrics={"val": {}, "best_epoch": 1, "history": []},
            ),
        ).version
    return {
        "job_id": job["id"],
        "batch_id": batch["id"],
        "dataset_id": dataset["id"],
        "run_id": run["id"],
        "delivery_id": delivery["id"],
        "name": version,
        "feedback_id": correction["id"],
        "key_id": str(apikeys_list(app)[0].id),
    }


def apikeys_list(app):
    with app.extensions["captioner"].db.session() as session:
        return api_keys.list_keys(session, "tenant-a")


def fill(rule: str, ids: dict[str, str]) -> str:
    """The rule's URL with each parameter replaced by its id in `ids`."""
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ids[m.group(1)], rule)


def call(client, method: str, url: str, headers: dict | None = None):
    """The request with a body only the feedback route reads (the others ignore it or refuse
    it after the key and the ids are checked)."""
    return client.open(url, method=method, headers=headers or {}, json={"caption": "a cat"})


def test_the_table_names_every_route_and_the_app_agrees(app):
    found = {
        (method, rule): required_scope(app, endpoint) for method, rule, endpoint in routes(app)
    }
    assert found == SCOPES  # a new route must be added here, with what it needs


@pytest.mark.parametrize(
    "bad", [None, "Bearer", "Bearer cap_not-a-key", "Basic dXNlcjpwYXNz", "cap_no-scheme"]
)
def test_without_a_valid_key_every_route_answers_401(app, owned, bad):
    client = app.test_client()
    for method, rule, _ in routes(app):
        if SCOPES[(method, rule)] == PUBLIC:
            continue
        response = call(client, method, fill(rule, owned), {"Authorization": bad} if bad else {})
        assert response.status_code == 401, (method, rule)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["code"] == "unauthorized"


def test_a_key_without_the_scope_gets_403_on_every_route_that_needs_it(app, owned, keys):
    client = app.test_client()
    lacking = {"jobs": keys["training"], "training": keys["jobs"], "admin": keys["admin"]}
    for method, rule, _ in routes(app):
        needed = SCOPES[(method, rule)]
        if needed in (PUBLIC, ANY_KEY):
            continue
        response = call(client, method, fill(rule, owned), bearer(lacking[needed]))
        assert response.status_code == 403, (method, rule)
        assert response.get_json()["code"] == "forbidden"


def test_another_tenants_ids_answer_exactly_like_missing_ones(app, owned, keys):
    client = app.test_client()
    checked = 0
    for method, rule, _ in routes(app):
        names = re.findall(r"<(?:\w+:)?(\w+)>", rule)
        if not names or names[0] not in TENANT_IDS:
            continue
        missing = {name: str(uuid.uuid4()) for name in names}
        theirs = call(client, method, fill(rule, owned), bearer(keys["b"]))
        absent = call(client, method, fill(rule, missing), bearer(keys["b"]))
        assert theirs.status_code == absent.status_code == 404, (method, rule)
        expected = absent.get_data(as_text=True).replace(missing[names[0]], owned[names[0]])
        assert theirs.get_data(as_text=True) == expected, (method, rule)
        checked += 1
    assert checked >= 13


def test_listings_show_only_the_callers_tenant(app, owned, keys, client):
    other = app.test_client()
    for url, field, name in [
        ("/v1/jobs", "jobs", "job_id"),
        ("/v1/datasets", "datasets", "dataset_id"),
        ("/v1/training-runs", "training_runs", "run_id"),
    ]:
        theirs = {
            item["id"] for item in other.get(url, headers=bearer(keys["b"])).get_json()[field]
        }
        mine = {item["id"] for item in client.get(url).get_json()[field]}
        assert owned[name] in mine and not mine & theirs, url  # B may have its own, never A's


def test_the_owner_still_reaches_everything(client, owned):
    for url in [
        "/v1/jobs/{job_id}",
        "/v1/batches/{batch_id}",
        "/v1/datasets/{dataset_id}",
        "/v1/training-runs/{run_id}",
        "/v1/deliveries/{delivery_id}",
    ]:
        assert client.get(url.format(**owned)).status_code == 200, url


def test_webhook_secrets_are_per_tenant(app, client, keys):
    mine = client.get("/v1/webhooks/secret").get_json()["secret"]
    theirs = app.test_client().get("/v1/webhooks/secret", headers=bearer(keys["b"]))
    assert theirs.get_json()["secret"] != mine


def test_a_key_made_over_the_api_works_once_and_not_after_it_is_revoked(app, client):
    made = client.post("/v1/keys", json={"tenant": "tenant-c", "scopes": ["jobs"], "name": "ci"})
    assert made.status_code == 201
    body = made.get_json()
    assert body["key"].startswith("cap_") and body["prefix"] == body["key"][:12]
    other = app.test_client()
    assert other.get("/v1/jobs", headers=bearer(body["key"])).status_code == 200
    listed = client.get("/v1/keys?tenant=tenant-c").get_json()["keys"]
    assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
    assert listed[0]["last_used_at"] is not None
    assert client.delete(f"/v1/keys/{body['id']}").get_json()["revoked_at"] is not None
    assert other.get("/v1/jobs", headers=bearer(body["key"])).status_code == 401  # at once


def test_a_key_revoked_by_another_process_stops_within_the_cache_time(app):
    db = app.extensions["captioner"].db
    key = admin_key(db, "tenant-cached")
    known, uncached = api_keys.KnownKeys(db, ttl_s=0.5), api_keys.KnownKeys(db, ttl_s=0)
    caller = known.caller(key)
    assert caller.tenant == "tenant-cached" and uncached.caller(key) == caller
    with db.session() as session:  # as another API process would
        api_keys.revoke(session, caller.key_id)
    assert known.caller(key) == caller and uncached.caller(key) is None
    time.sleep(0.6)
    assert known.caller(key) is None
    assert known.caller("cap_unknown") is None


@pytest.mark.parametrize(
    "body, code",
    [
        ({"tenant": "", "scopes": ["jobs"]}, "invalid_tenant"),
        ({"tenant": "a b", "scopes": ["jobs"]}, "invalid_tenant"),
        ({"tenant": "t", "scopes": []}, "invalid_scopes"),
        ({"tenant": "t", "scopes": ["root"]}, "invalid_scopes"),
        ({"tenant": "t", "scopes": "jobs"}, "invalid_scopes"),
        ({"tenant": "t", "scopes": ["jobs"], "expires": 1}, "unknown_field"),
    ],
)
def test_a_bad_key_request_is_refused(client, body, code):
    response = client.post("/v1/keys", json=body)
    assert (response.status_code, response.get_json()["code"]) == (400, code)


def test_only_an_admin_keys_run_may_promote(app, keys):
    other = app.test_client()
    shapes = {"type": "shapes", "size": 20}
    refused = other.post(
        "/v1/training-runs",
        headers=bearer(keys["admin"]),  # no admin scope
        json={"dataset": shapes, "promotion": "always"},
    )
    assert (refused.status_code, refused.get_json()["code"]) == (403, "forbidden")
    run = other.post("/v1/training-runs", headers=bearer(keys["admin"]), json={"dataset": shapes})
    assert run.status_code == 201 and run.get_json()["promotion"]["policy"] == "never"
    admins = other.post("/v1/training-runs", headers=bearer(keys["b"]), json={"dataset": shapes})
    assert admins.get_json()["promotion"]["policy"] == "if_better"


def test_no_server_paths_or_host_names_in_payloads(app, client, owned):
    with app.extensions["captioner"].db.session() as session:
        registry.report_worker(session, "inference@gpu-7.internal.example", model_version="v1")
    shown = client.get("/v1/workers").get_data(as_text=True)
    shown += client.get(f"/v1/models/{owned['name']}").get_data(as_text=True)
    assert "gpu-7" not in shown and "/srv/" not in shown and "inference@" in shown


def test_a_dump_of_every_table_shows_no_key_and_no_webhook_secret(app, settings, client):
    made = client.post(
        "/v1/keys",
        json={"tenant": "tenant-d", "scopes": ["jobs"]},
        headers={"Idempotency-Key": "dump"},
    )  # its answer is kept for replay
    key = made.get_json()["key"]
    secret = client.get("/v1/webhooks/secret").get_json()["secret"]
    rotated = client.post("/v1/webhooks/secret/rotate", json={}).get_json()["secret"]
    url = settings.database_url.replace("+psycopg2", "")
    dump = subprocess.run(
        ["pg_dump", "--data-only", url], capture_output=True, text=True, check=True
    ).stdout
    assert "COPY public.api_keys" in dump and "COPY public.webhook_secrets" in dump
    assert "COPY public.idempotency_keys" in dump and "\tdump\t" in dump
    for clear in (key, secret, rotated, secret.removeprefix("whsec_")):
        assert clear not in dump and clear.encode().hex() not in dump  # bytea dumps as hex
    assert admin_key(app.extensions["captioner"].db)[4:] not in dump

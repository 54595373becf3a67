"""OpenAPI links: from the answer of an operation that creates something to the operations on
what it created (OpenAPI 3.1, "Link Object"). Swagger UI shows them; schemathesis' stateful mode
follows them to reach the states behind a created job, batch, key, dataset or run
(tests/test_stateful_fuzz.py).
"""

from __future__ import annotations

import copy
from typing import Any

# (method, path that creates): (its answers' field with the new id, the path parameter it fills,
# the operations on it as (method, path)).
LINKS: dict[tuple[str, str], tuple[str, str, tuple[tuple[str, str], ...]]] = {
    ("post", "/v1/jobs"): (
        "id",
        "job_id",
        (
            ("get", "/v1/jobs/{job_id}"),
            ("get", "/v1/jobs/{job_id}/attention"),
            ("get", "/v1/jobs/{job_id}/attention.png"),
            ("get", "/v1/jobs/{job_id}/deliveries"),
            ("post", "/v1/jobs/{job_id}/feedback"),
            ("post", "/v1/jobs/{job_id}/cancel"),
            ("delete", "/v1/jobs/{job_id}"),
        ),
    ),
    ("post", "/v1/batches"): (
        "id",
        "batch_id",
        (
            ("get", "/v1/batches/{batch_id}"),
            ("get", "/v1/batches/{batch_id}/deliveries"),
            ("delete", "/v1/batches/{batch_id}"),
        ),
    ),
    ("post", "/v1/jobs/{job_id}/feedback"): (
        "id",
        "feedback_id",
        (("get", "/v1/feedback/{feedback_id}"), ("delete", "/v1/feedback/{feedback_id}")),
    ),
    ("post", "/v1/keys"): (
        "id",
        "key_id",
        (("get", "/v1/keys/{key_id}"), ("delete", "/v1/keys/{key_id}")),
    ),
    ("post", "/v1/datasets"): (
        "id",
        "dataset_id",
        (("get", "/v1/datasets/{dataset_id}"), ("delete", "/v1/datasets/{dataset_id}")),
    ),
    ("post", "/v1/training-runs"): (
        "id",
        "run_id",
        (
            ("get", "/v1/training-runs/{run_id}"),
            ("get", "/v1/training-runs/{run_id}/curves"),
            ("get", "/v1/training-runs/{run_id}/curves.png"),
            ("get", "/v1/training-runs/{run_id}/deliveries"),
            ("post", "/v1/training-runs/{run_id}/cancel"),
        ),
    ),
}


def with_links(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the OpenAPI `document` whose creating operations' 2xx answers link to the
    operations on what they made (named by operationId)."""
    document = copy.deepcopy(document)
    paths = document["paths"]
    for (method, path), (field, parameter, targets) in LINKS.items():
        links = {
            link_name(target_method, target_path): {
                "operationId": paths[target_path][target_method]["operationId"],
                "parameters": {parameter: f"$response.body#/{field}"},
            }
            for target_method, target_path in targets
        }
        for status, answer in paths[path][method]["responses"].items():
            if status.startswith("2"):
                answer["links"] = links
    return document


def link_name(method: str, path: str) -> str:
    """A link's name from its operation: `get /v1/jobs/{job_id}/attention.png` is
    `GetAttentionPng`, `delete /v1/jobs/{job_id}` is `DeleteJobs`."""
    words = [part for part in path.split("/") if part and not part.startswith("{")][-1]
    return method.title() + "".join(w.title() for w in words.replace(".", "-").split("-"))

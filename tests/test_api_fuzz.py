"""schemathesis against the real app (Postgres, Redis, moto S3): every operation of
/openapi.json, fed generated valid and invalid requests, with every check schemathesis has
(no 5xx, answers that match the documented status codes, media types, headers and schemas,
invalid input refused, valid input accepted where it can be, auth not ignored, ...)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import CONTENT_CHECKED

EXAMPLES = 30  # per operation and phase


@pytest.fixture(scope="module")
def api_schema(app, api_key):
    """The app's own document, called in process (WSGI) with an admin key."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    schema.config.headers = {"Authorization": f"Bearer {api_key}"}
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_holds_under_fuzzing(case, api_key):
    excluded = [positive_data_acceptance] if case.operation.label in CONTENT_CHECKED else []
    case.call_and_validate(headers={"Authorization": f"Bearer {api_key}"}, excluded_checks=excluded)

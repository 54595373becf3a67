"""The HTTP API (Flask): `create_app()` builds it; it never imports TensorFlow or `model/`."""

from __future__ import annotations

from flask import Flask

from api.auth import register_auth
from api.bodies import SafeJSONProvider
from api.body_limits import BATCH, dataset_body, register_body_limits
from api.contract import register_contract
from api.errors import register_error_handlers
from api.idempotency import register_idempotency
from api.instruments import register_metrics
from api.limits import register_limits
from api.links import register_public_links
from api.routes import blueprints
from api.services import Services
from core.settings import Settings, from_env


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """The app for `settings` (read from the environment when not given)."""
    settings = settings or (services.settings if services else from_env())
    app = Flask(__name__, static_folder=None)
    # The ceiling over every route's own limit (api.body_limits): a batch's, or a dataset's.
    app.config["MAX_CONTENT_LENGTH"] = max(BATCH(settings), dataset_body(settings))
    app.json = SafeJSONProvider(app)  # keys in insertion order; too-deep nesting is bad JSON
    app.extensions["captioner"] = services or Services.from_settings(settings)
    register_metrics(app)  # first: refused requests are counted and timed too
    register_auth(app)
    register_limits(app, settings)  # after auth: counted per API key
    register_body_limits(app)  # before idempotency, which reads create bodies to the limit
    register_idempotency(app)  # after auth: keys are per tenant
    register_public_links(app, settings)  # PUBLIC_URL: absolute links in answers
    register_blueprints(app)
    register_contract(app)  # /openapi.json and /docs/
    register_error_handlers(app)
    return app


def register_blueprints(app: Flask) -> None:
    """Attach every route's blueprint."""
    for blueprint in blueprints():
        app.register_blueprint(blueprint)

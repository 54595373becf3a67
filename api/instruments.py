"""Every API request counted and timed for Prometheus, by route template (never an id),
method and status; /metrics (api.routes.metrics) serves the counts."""

from __future__ import annotations

import time

from flask import Flask, g, request

from core.metrics import HTTP_REQUESTS, HTTP_SECONDS


def register_metrics(app: Flask) -> None:
    """Count and time every request by route and status."""

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            HTTP_SECONDS.labels(route, request.method).observe(time.perf_counter() - g.started)
        return response

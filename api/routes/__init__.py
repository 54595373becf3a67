"""The API's routes: one module per resource, each with a blueprint `bp`. Route modules never
import each other (an import-linter contract): what several of them need lives below them, in
`api.lookups` (the caller's rows by id) and `api.submissions` (reading and recording images)."""

from __future__ import annotations

from flask import Blueprint


def blueprints() -> list[Blueprint]:
    """Every route module's blueprint, in the order the app registers them."""
    from api.routes import (
        attention,
        batches,
        curves,
        datasets,
        feedback,
        health,
        jobs,
        keys,
        metrics,
        page,
        registry,
        training,
        webhooks,
    )

    modules = (
        health,
        metrics,
        jobs,
        attention,
        batches,
        webhooks,
        datasets,
        training,
        curves,
        registry,
        keys,
        feedback,
        page,
    )
    return [module.bp for module in modules]

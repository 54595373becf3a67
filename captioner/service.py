"""Service commands: `captioner migrate | worker | beat | api | up`.

Each reads the settings from the environment; with nothing set they run the embedded mode
(SQLite, local blobs and the filesystem broker under CAPTIONER_DATA_DIR).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from celery.utils.nodenames import host_format

from captioner.processes import api_server, background, beat_command, worker_command
from core.broker import QUEUES
from core.logs import configure
from core.settings import Settings, from_env
from store.payloads import worker_label

TRAINING_CONCURRENCY = 1  # a training worker runs one run at a time on its GPU
WEBHOOK_CONCURRENCY = 32  # webhook workers wait on receivers: a few slow ones must not stall all


def add_commands(commands) -> None:
    """Register the service subcommands on the CLI's subparsers."""
    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(run=run_migrate)

    worker = commands.add_parser("worker", help="run a Celery worker")
    worker.add_argument(
        "--queue", default="inference", help=f"comma-separated queues from {', '.join(QUEUES)}"
    )
    worker.add_argument(
        "--gpus",
        choices=["all", "none"],
        default="none",
        help="all: a process per visible GPU (one CPU worker if none)",
    )
    worker.add_argument("--name", help="Celery node name (default: QUEUE@HOSTNAME)")
    worker.add_argument(
        "--concurrency",
        type=int,
        help="pool threads (inference: 2 × batch size, webhooks: 32, training: 1)",
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(run=run_worker)

    models = commands.add_parser("models", help="the model registry").add_subparsers(required=True)
    imported = models.add_parser("import", help="register a bundle made by `captioner train`")
    imported.add_argument("bundle", type=Path)
    imported.add_argument("--promote", action="store_true", help="make it the active version")
    imported.set_defaults(run=run_import)

    beat = commands.add_parser("beat", help="run the scheduler that triggers the sweepers")
    beat.set_defaults(run=run_beat)

    for name, text in (("api", "serve the HTTP API"), ("up", "run the API and the workers")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8000)
        command.set_defaults(run=run_api if name == "api" else run_up)


def run_migrate(_args: argparse.Namespace) -> None:
    """Bring the database schema to the newest migration."""
    settings = from_env()
    migrate(settings)
    print(f"database schema is up to date ({redact(settings.database_url)})")


def migrate(settings: Settings) -> None:
    """Upgrade the schema (creating the data directory for the embedded database)."""
    from store.migrate import upgrade

    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)


def run_import(args: argparse.Namespace) -> None:
    """Upload a bundle to the blob store and register it as a new version."""
    from store.blobs import open_blob_store
    from store.db import Database
    from worker.bundles import import_bundle

    settings = from_env()
    migrate(settings)
    db = Database(settings.database_url)
    try:
        version = import_bundle(db, open_blob_store(settings), args.bundle, args.promote)
    finally:
        db.dispose()
    print(f"registered {args.bundle} as {version}" + (" (active)" if args.promote else ""))


def run_worker(args: argparse.Namespace) -> int:
    """A worker on the given queues; with `--gpus all`, one pinned process per GPU."""
    from worker.gpus import plan_workers, supervise, visible_gpus

    queues = [q.strip() for q in args.queue.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise ValueError(f"unknown queue {unknown or args.queue!r}; choose from {QUEUES}")
    name = args.name or f"{queues[0]}@%h"
    if args.gpus == "all" and "inference" in queues:
        plan = plan_workers(visible_gpus(), name)
        if plan[0].env:  # at least one GPU: a pinned child process each
            command = worker_command(",".join(queues), gpus="none", verbose=args.verbose)
            return supervise(plan, command)
    return run_celery_worker(from_env(), queues, name, args.concurrency, args.loglevel)


def run_celery_worker(
    settings: Settings, queues: list[str], name: str, concurrency: int | None, loglevel: str
) -> int:
    """Run a Celery worker in this process until it is stopped."""
    from worker.app import create_worker_app

    if settings.embedded:
        migrate(settings)
    if concurrency is None:
        concurrency = TRAINING_CONCURRENCY
        if "webhooks" in queues:
            concurrency = WEBHOOK_CONCURRENCY
        if "inference" in queues:
            concurrency = 2 * settings.batch_max_size
    # From the first line (the worker's own set-up configures it again, for `celery -A …`).
    configure(
        ",".join(sorted(queues)),
        settings.log_format,
        settings.log_level,
        worker=worker_label(host_format(name)),
    )
    app = create_worker_app(settings)
    app.worker_main(
        [
            "--quiet",
            "worker",
            "--queues",
            ",".join(queues),
            "--hostname",
            name,
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def run_beat(_args: argparse.Namespace) -> None:
    """Celery beat with the sweeper's schedule (run exactly one)."""
    from worker.app import create_worker_app

    settings = from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir / "celerybeat-schedule"
    configure("beat", settings.log_format, settings.log_level)
    create_worker_app(settings).start(
        ["--quiet", "beat", "--schedule", str(schedule), "--loglevel", settings.log_level]
    )


def run_api(args: argparse.Namespace) -> None:
    """The API on a threaded development server (production uses gunicorn: see the README)."""
    settings = from_env()
    if settings.embedded:
        migrate(settings)
    serve_api(settings, args.host, args.port)


def serve_api(settings: Settings, host: str, port: int, warn_without_model: bool = False) -> None:
    """Serve the API until interrupted (in the embedded mode, with a local admin key), after
    saying where the page and the key are; `warn_without_model`: warn when no model is active."""
    from captioner.banner import no_model_warning, startup_lines

    configure("api", settings.log_format, settings.log_level)
    if settings.embedded:
        from captioner.keys import local_admin_key

        local_admin_key(settings)
    with api_server(settings, host, port, access_log=True) as url:
        print(startup_lines(settings, url), file=sys.stderr, flush=True)
        warning = no_model_warning(settings, url) if warn_without_model else None
        if warning:
            print(warning, file=sys.stderr, flush=True)
        threading.Event().wait()


def run_up(args: argparse.Namespace) -> None:
    """Migrate, start the workers (inference: one per GPU; training; webhooks) and beat, serve
    the API."""
    settings = from_env()
    migrate(settings)
    stop_on_sigterm()
    workers = [
        worker_command("inference", gpus="all", verbose=args.verbose),
        worker_command("training", verbose=args.verbose),
        worker_command("webhooks", verbose=args.verbose),
    ]
    with background([*workers, beat_command(args.verbose)]):
        serve_api(settings, args.host, args.port, warn_without_model=True)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit, so the child processes are stopped on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def redact(url: str) -> str:
    """A database URL without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}"

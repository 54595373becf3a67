"""Logs: one event per line, with the process role and, where they apply, `job_id`, `batch_id`,
`run_id`, `delivery_id` and `worker`; readable in a terminal (LOG_FORMAT=console) or JSON
(LOG_FORMAT=json).

structlog renders every record, including those of the standard `logging` loggers the code and
its libraries (Celery, gunicorn, Werkzeug) write to, so there is one format per process. Fields
bound with `bound(...)` (context variables: per thread) join every line logged meanwhile.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes: never written into log files


def configure(role: str, log_format: str = "console", level: str = "INFO", **fields: str) -> None:
    """Send every log record of this process through structlog, tagged with `role` (api,
    inference, training, webhooks, beat, …), the process id and `fields` (worker=…). A record's
    `extra` fields (job_id=…) become fields of its line too."""
    static = {"role": role, "pid": os.getpid(), **fields}
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        lambda _logger, _name, event: static | event,
        strip_colours,
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        # Plain tracebacks: rich's, with every frame's locals, took seconds each under the
        # logging lock (a database outage's failed tasks then stalled the worker for minutes)
        # and printed whatever the locals held.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings become events too, not bare stderr lines
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def strip_colours(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """The event text without terminal colour codes (Werkzeug colours its access lines)."""
    text = event.get("event")
    if isinstance(text, str) and "\x1b[" in text:
        event["event"] = COLOUR.sub("", text)
    return event


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Fields (job_id=…) on every line this thread logs in the block; a field `bind` adds
    inside the block goes with it too. None values are left out."""
    before = set(structlog.contextvars.get_contextvars())
    tokens = structlog.contextvars.bind_contextvars(**_text(fields))
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
        added = set(structlog.contextvars.get_contextvars()) - before
        structlog.contextvars.unbind_contextvars(*added)


def bind(**fields: Any) -> None:
    """Add fields for the rest of the enclosing `bound` block (a batch_id learnt on the way)."""
    structlog.contextvars.bind_contextvars(**_text(fields))


def _text(fields: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in fields.items() if value is not None}


NATIVE_LEVELS = {"W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


@contextmanager
def native_stderr_logged(name: str) -> Iterator[None]:
    """Log what native code writes straight to stderr (file descriptor 2) while the block runs,
    one event per line on logger `name`, instead of letting it through as raw text.

    TensorFlow's C++ start-up lines ("oneDNN custom operations are on", on CPUs that have them)
    go out through absl before its logging is set up, whatever TF_CPP_MIN_LOG_LEVEL says, and
    would break a log of JSON lines. A line's first letter gives its level (I, W, E, F)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
    logger = logging.getLogger(name)
    for line in filter(None, map(str.strip, lines)):
        logger.log(NATIVE_LEVELS.get(line[0], logging.INFO), line)

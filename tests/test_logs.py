"""core.logs: one event per line, JSON or console, with the process's fields and the ones a
block binds; libraries' lines (standard logging, warnings, Werkzeug's colours) included."""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings

import pytest

from core.logs import bind, bound, configure, native_stderr_logged

LOGGERS = ("worker.inference", "worker.webhooks", "werkzeug", "py.warnings")


@pytest.fixture
def captured(capsys):
    """A function giving what the process wrote to stderr so far (the root logger's handlers are
    restored afterwards)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    # Other tests leave their marks: the dev server quiets werkzeug, alembic's logging config
    # disables loggers that existed before it ran.
    used = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger.level, logger.disabled) for logger in used]
    for logger in used:
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    yield lambda: capsys.readouterr().err
    root.handlers, root.level = handlers, level
    for logger, (old_level, disabled) in zip(used, saved, strict=True):
        logger.setLevel(old_level)
        logger.disabled = disabled
    logging.captureWarnings(False)


def test_json_lines_carry_role_worker_bound_fields_and_extra(captured):
    configure("inference", "json", worker="inference@3f1c09a2b4")
    log = logging.getLogger("worker.inference")
    with bound(job_id="j1", batch_id=None):
        bind(run_id="r1")
        log.info("job %s failed", "j1", extra={"code": "corrupt_image"})
    log.info("after the block")
    first, second = (json.loads(line) for line in captured().splitlines())
    assert first["event"] == "job j1 failed" and first["code"] == "corrupt_image"
    assert (first["role"], first["worker"], first["job_id"], first["run_id"]) == (
        "inference",
        "inference@3f1c09a2b4",
        "j1",
        "r1",
    )
    assert "batch_id" not in first  # None binds nothing
    assert "job_id" not in second and "run_id" not in second  # the block's fields went with it
    assert first["level"] == "info" and first["timestamp"].endswith("Z")


def test_fields_bound_in_one_thread_stay_in_it(captured):
    configure("webhooks", "json")
    log = logging.getLogger("worker.webhooks")
    with bound(delivery_id="d1"):
        thread = threading.Thread(target=lambda: log.info("elsewhere"))
        thread.start()
        thread.join()
    assert "delivery_id" not in json.loads(captured())


def test_console_lines_have_no_colour_codes(captured):
    configure("api", "console")
    logging.getLogger("werkzeug").info('127.0.0.1 - "\x1b[32mGET /healthz HTTP/1.1\x1b[0m" 200 -')
    text = captured()
    assert "\x1b[" not in text and 'GET /healthz HTTP/1.1" 200' in text and "role=api" in text


def test_warnings_become_json_events_too(captured):
    configure("inference", "json")
    warnings.warn("running as root", UserWarning, stacklevel=1)
    (event,) = (json.loads(line) for line in captured().splitlines())
    assert "running as root" in event["event"] and event["role"] == "inference"


def test_native_lines_written_to_stderr_become_log_events(caplog, capfd):
    with caplog.at_level(logging.INFO, logger="native"), native_stderr_logged("native"):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() ...\n")
        os.write(2, b"I0000 00:00:1.0  7 port.cc:153] oneDNN custom operations are on.\n\n")
    assert "oneDNN" not in capfd.readouterr().err  # nothing got through as raw text
    assert [(r.levelno, r.getMessage()[:12]) for r in caplog.records if r.name == "native"] == [
        (logging.WARNING, "WARNING: All"),
        (logging.INFO, "I0000 00:00:"),
    ]

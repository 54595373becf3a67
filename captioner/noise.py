"""Quiet by default: a `captioner` command keeps the libraries' start-up chatter (TensorFlow's
absl, oneDNN and CUDA lines, kombu's "No hostname was supplied") off stderr unless it is given
--verbose. Errors still show."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Read by TensorFlow's C++ logging once, when it is first imported: errors only.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2"}
# kombu: "No hostname was supplied" for each connection to the filesystem broker (7 lines from
# `captioner up`); tensorflow: the native start-up lines the workers log
# (core.logs.native_stderr_logged) and TensorFlow's Python warnings; absl: Keras' warnings.
CHATTY_LOGGERS = ("kombu", "tensorflow", "absl")


def quiet(verbose: bool) -> None:
    """Unless `verbose`, keep the chatty loggers to errors and TensorFlow's C++ logging too (an
    environment variable: this process's TensorFlow, and its child processes')."""
    if not verbose:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        # Celery's seven-line SecurityWarning, once per worker, when run as root (a container's
        # or a CI machine's user): said once by --verbose, not three times by `captioner up`.
        warnings.filterwarnings("ignore", message="You're running the worker with superuser")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


def import_tensorflow(verbose: bool) -> None:
    """Import TensorFlow now. Unless `verbose`, what its native code writes to stderr meanwhile
    is dropped: absl's "All log messages before absl::InitializeLog() is called…", oneDNN's and
    CUDA's start-up lines, which TF_CPP_MIN_LOG_LEVEL does not reach."""
    if verbose or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    with native_stderr_dropped():
        import tensorflow  # noqa: F401


@contextmanager
def native_stderr_dropped() -> Iterator[None]:
    """Drop what is written to stderr (file descriptor 2) while the block runs, unless the block
    raises: then it is written out, as it may say why."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))

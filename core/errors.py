"""Every exception the project raises on purpose, in one tree, defined here and nowhere else.

    CaptionerError                  the root: `except CaptionerError` catches only ours
    ├── SettingsError               bad or missing environment variables, all named at once
    ├── ImageError                  bytes that cannot be captioned; `.code` is stable
    ├── UrlError                    a URL the service may not, or could not, fetch; `.code`
    ├── DatasetError                not a usable caption dataset; `.problems` names each fault
    ├── VerificationError           a webhook not signed by the secret, or signed too long ago
    ├── BlobStoreError              the blob store cannot be used (endpoint, bucket, credentials)
    ├── BlobNotFound                no blob under the key (also a KeyError)
    ├── StoreUnavailable            the database cannot be reached (down, restarting, pool full)
    ├── BundleError                 a model bundle missing, malformed or of another format
    │   └── EncoderMismatch         …trained on the features of another encoder
    ├── TrainingStopped             training stopped at a step because the caller asked
    ├── ErrorResponse               the API refuses a request: HTTP status, code and message
    └── WorkerOutcome               a worker's task ends early; logged, never shown to users
        ├── JobSkipped              the job is terminal, canceled or leased elsewhere
        ├── TemporaryFailure        the job went back to the queue, to be tried again
        ├── RunSkipped              the training run is terminal or held by another worker
        └── LostLease               another worker took the training run over

Where they come from: SettingsError (core.settings), ImageError (core.images), UrlError
(core.netguard), DatasetError (core.archives, model.data), VerificationError (core.signatures),
BlobStoreError and BlobNotFound (store.blobs), StoreUnavailable (store.db), BundleError and
EncoderMismatch (model.bundle), TrainingStopped (model.training), ErrorResponse (api), the
worker outcomes (worker.inference, worker.training). Errors of the libraries underneath (Pillow,
SQLAlchemy, botocore, Celery) are turned into these where a caller can act on them, and
otherwise left to propagate. The light client (`captioner_client`, its own distribution) has a
tree of its own, `captioner_client.CaptionerError`, with its `ApiError` for an error answer.
"""

from __future__ import annotations

_SHOWN = 20  # problems quoted in str() of a SettingsError or DatasetError


class CaptionerError(Exception):
    """The root of every error the project raises on purpose."""


def _problems_text(problems: list[str], noun: str) -> str:
    """'3 problems: a; b; c', quoting the first _SHOWN; one problem alone as it is."""
    shown = "; ".join(problems[:_SHOWN])
    more = len(problems) - _SHOWN
    count = f"{len(problems)} {noun}: " if len(problems) > 1 else ""
    return count + shown + (f"; … and {more} more" if more > 0 else "")


class SettingsError(CaptionerError, ValueError):
    """Settings that cannot start a service; `problems` names every bad variable."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(_problems_text(self.problems, "bad settings"))


class ImageError(CaptionerError, ValueError):
    """Bytes that cannot be captioned; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UrlError(CaptionerError, ValueError):
    """A URL refused by the SSRF guard or failed to fetch; `code` is stable (url_forbidden…)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DatasetError(CaptionerError, ValueError):
    """Not a usable COCO-format caption dataset; `problems` names each one (file, entry, fault)."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(_problems_text(self.problems, "problems"))


class VerificationError(CaptionerError, ValueError):
    """The message is not signed by the secret, or its timestamp is too old or too new."""


class BlobStoreError(CaptionerError, RuntimeError):
    """The store cannot be used: endpoint unreachable, bucket missing, credentials refused."""


class BlobNotFound(CaptionerError, KeyError):
    """No blob is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class StoreUnavailable(CaptionerError, RuntimeError):
    """The database cannot be reached for now: refused, dropped, or no connection free in time."""


class BundleError(CaptionerError):
    """A bundle is missing, malformed or does not fit the encoder at hand."""


class EncoderMismatch(BundleError):
    """The bundle was trained on features of a different encoder."""


class TrainingStopped(CaptionerError):
    """`should_stop` said so; the last checkpoint is the last finished epoch."""


class ErrorResponse(CaptionerError):
    """A request the API refuses: HTTP status, stable code, readable message (api.errors)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict | None = None, **details
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}  # e.g. Retry-After, WWW-Authenticate
        self.details = details  # more fields for the body, e.g. every bad entry of a dataset


class WorkerOutcome(CaptionerError):
    """A task that ends early on purpose; the worker logs `outcome` and takes the next one."""

    outcome = "ended early"


class JobSkipped(WorkerOutcome):
    """The job is not ours to run: already terminal, canceled, or leased by another worker."""

    outcome = "skipped (terminal, canceled or leased elsewhere)"


class TemporaryFailure(WorkerOutcome):
    """The job was put back in the queue and its message should be retried after `delay_s`."""

    outcome = "put back in the queue, to be retried"

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class RunSkipped(WorkerOutcome):
    """The run is not ours: terminal, canceled, or held by another worker."""

    outcome = "skipped (terminal, canceled or held by another worker)"


class LostLease(WorkerOutcome):
    """Another worker took the run over (this one was silent past its lease)."""

    outcome = "stopped: another worker took the run over"

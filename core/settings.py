"""Settings: the one module that reads the environment.

With nothing set, the embedded mode applies: a SQLite file, a local-directory blob store and
Celery's filesystem broker, all under one data directory, so everything runs with no servers.
Setting `DATABASE_URL` selects production mode, where `BROKER_URL` and `S3_BUCKET` are required.
Every problem fails at start-up, all of them named at once; a variable that looks like a
misspelt setting (`CAPTIONER_…`, or close to a known name) is warned about, not silently ignored.

Pydantic validates the values (types and bounds, every error collected). pydantic-settings is
not used: it reads the process environment whenever a Settings is built, while tests and child
processes build them from an explicit mapping, and it would not warn about unknown variables.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import field, fields, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.dataclasses import dataclass

from core.errors import SettingsError
from core.images import MAX_PIXELS
from core.netguard import parse_allow

log = logging.getLogger(__name__)
# Seconds before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
PREFIX = "CAPTIONER_"  # the project's own variables; an unknown one is probably a typo


def _schedule(raw: object) -> object:
    """'0,5s,5m,2h' as seconds (0, 5, 300, 7200); a bare number is seconds. Tuples pass."""
    if not isinstance(raw, str):
        return raw
    delays = []
    for part in raw.split(","):
        part = part.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h") if part.endswith(u)), "")
        try:
            delays.append(float(part.removesuffix(unit)) * UNITS.get(unit, 1.0))
        except ValueError:
            raise ValueError(f"{part!r} is not a delay like 0, 5s, 5m or 2h") from None
    return tuple(delays)


def _allow_list(raw: str) -> str:
    """URL_ALLOW as given, once core.netguard has parsed every entry."""
    parse_allow(raw)
    return raw


Count = Annotated[int, Field(ge=1)]
# An http(s) origin, perhaps with a path prefix; a trailing slash is dropped
PublicUrl = Annotated[
    str,
    Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$"),
    AfterValidator(lambda url: url.rstrip("/")),
]
Seconds = Annotated[float, Field(ge=0.001, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Delays = Annotated[
    tuple[Annotated[float, Field(ge=0.0, allow_inf_nan=False)], ...], BeforeValidator(_schedule)
]


@dataclass(frozen=True)
class Settings:
    """Everything configurable; built once by `from_env` and passed to whoever needs it."""

    data_dir: Path  # CAPTIONER_DATA_DIR: embedded database, blobs, broker folders, bundles
    database_url: str  # DATABASE_URL: postgresql+psycopg2://… or sqlite:///…
    broker_url: str  # BROKER_URL: redis://… or filesystem://
    s3_bucket: str | None  # S3_BUCKET: None means the local blob store under data_dir/blobs
    s3_endpoint_url: str | None = None  # S3_ENDPOINT_URL: MinIO or moto; None for AWS
    s3_region: str = "us-east-1"  # AWS_REGION
    s3_access_key: str | None = field(default=None, repr=False)  # AWS_ACCESS_KEY_ID
    s3_secret_key: str | None = field(default=None, repr=False)  # AWS_SECRET_ACCESS_KEY
    # DB_POOL_SIZE: Postgres connections a process keeps open (and as many more for bursts,
    # closed after use): sized so the threads that use the database at once never open one
    db_pool_size: Count = 16
    model_bundle: Path | None = None  # MODEL_BUNDLE: bundle directory the workers load
    encoder_weights: str | None = None  # ENCODER_WEIGHTS: override the bundle's encoder source
    batch_max_size: Count = 32  # BATCH_MAX_SIZE: most jobs in one forward pass
    batch_max_wait_ms: Count = 50  # BATCH_MAX_WAIT_MS: longest wait after a batch's first job
    max_image_bytes: Count = 10 * 1024 * 1024  # MAX_IMAGE_BYTES: larger uploads are refused
    # KEY_CACHE_S: an API key checked is trusted this long by each API process without asking
    # the database again; a revocation reaches the other processes within it (0: every time)
    key_cache_s: Fraction = 5.0
    # INLINE_IMAGE_BYTES: a single upload this small lives in its job's row, not the blob store
    # (no S3 PUT on submit nor GET on claim); 0 stores every image as an object
    inline_image_bytes: Annotated[int, Field(ge=0)] = 256 * 1024
    max_image_pixels: Count = MAX_PIXELS  # MAX_IMAGE_PIXELS: decompression-bomb guard
    job_max_attempts: Count = 3  # JOB_MAX_ATTEMPTS: then the job fails for good
    # JOB_LEASE_SECONDS: a job's lease, renewed by its worker every quarter of it until the
    # result is stored; a worker silent for this long is taken for dead and its jobs requeued
    job_lease_seconds: Count = 60
    sweep_interval_s: Seconds = 30.0  # SWEEP_INTERVAL_S: how often beat runs the sweepers
    webhook_timeout_s: Seconds = 15.0  # WEBHOOK_TIMEOUT_S: an attempt without a 2xx by then fails
    # WEBHOOK_SCHEDULE: delay before each attempt (Standard Webhooks' schedule), e.g. "0,5s,5m"
    webhook_schedule: Delays = DEFAULT_SCHEDULE
    webhook_jitter: Fraction = 0.1  # WEBHOOK_JITTER: each delay is scaled by 1 ± this, at random
    webhook_secret_grace_s: Fraction = (
        86400.0  # WEBHOOK_SECRET_GRACE_S: a rotated-out secret's life
    )
    model_poll_s: Seconds = 2.0  # MODEL_POLL_S: how often inference workers look for a new model
    # TRAINING_LEASE_S: a silent training worker is taken for dead by then
    training_lease_s: Annotated[float, Field(ge=3.0, allow_inf_nan=False)] = 120.0
    training_max_attempts: Count = 3  # TRAINING_MAX_ATTEMPTS: worker deaths before a run fails
    max_dataset_bytes: Count = 2 * 1024**3  # MAX_DATASET_BYTES: larger archives are refused
    # CAPTIONER_BENCH_STANDIN_MODEL_MS: replace the model's forward pass by a stand-in that
    # sleeps this long per batch and returns a fixed caption. Benchmarks and tests only.
    bench_standin_model_ms: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    # CAPTIONER_SECRET_KEYS: comma-separated Fernet keys; the first encrypts webhook secrets at
    # rest, all of them decrypt (rotation). Required in production; the embedded mode keeps a
    # generated one in data_dir/secret.key.
    secret_keys: str | None = field(default=None, repr=False)
    # RATE_LIMIT: requests per API key, in Flask-Limiter's notation ("20/second;600/minute")
    rate_limit: str = "50/second;1200/minute"
    # RATE_LIMIT_STORAGE: where the counts live: redis://… shares them between API processes;
    # None: the broker's Redis in production, memory:// in the embedded mode
    rate_limit_storage: str | None = None
    max_queued_jobs: Count = 20_000  # MAX_QUEUED_JOBS: all tenants; more submits get 503
    max_queued_per_tenant: Count = 5_000  # MAX_QUEUED_PER_TENANT: one tenant's share
    # RETENTION_DAYS: finished jobs and their blobs are purged after this many days (None: kept)
    retention_days: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    # URL_ALLOW: comma-separated CIDRs and host names that image URLs and webhooks may reach
    # although private (the SSRF guard refuses every non-public address otherwise); empty: none
    url_allow: Annotated[str, AfterValidator(_allow_list)] = ""
    url_fetch_timeout_s: Seconds = 20.0  # URL_FETCH_TIMEOUT_S: an image URL's whole download
    # PUBLIC_URL: the service's address as clients reach it (https://captioner.example.com);
    # set, links in answers and webhooks are absolute; None: relative paths
    public_url: PublicUrl | None = None
    # LOG_FORMAT: "console" (one readable line per event) or "json" (one JSON object per line,
    # for production log pipelines); LOG_LEVEL: DEBUG, INFO, WARNING or ERROR
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # METRICS_PORT: Prometheus metrics on this port: a worker process's (+ its GPU index when
    # `--gpus all` starts one process per GPU), and the API's under gunicorn (whose public port
    # then answers /metrics 404); 0: no endpoint. The development server serves /metrics itself.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    # READY_FILE: an inference worker creates this file once its model is loaded (and removes
    # it when it stops): a Kubernetes readiness probe checks it; None: no file
    ready_file: Path | None = None

    @property
    def embedded(self) -> bool:
        """True when no servers are configured (SQLite, local blobs, filesystem broker)."""
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes) -> Settings:
        """A copy with some fields replaced (tests and the CLI use it)."""
        return replace(self, **changes)


# Each field's variable: its name in capitals, but for these.
_RENAMED = {
    "data_dir": "CAPTIONER_DATA_DIR",
    "s3_region": "AWS_REGION",
    "s3_access_key": "AWS_ACCESS_KEY_ID",
    "s3_secret_key": "AWS_SECRET_ACCESS_KEY",
    "bench_standin_model_ms": "CAPTIONER_BENCH_STANDIN_MODEL_MS",
    "secret_keys": "CAPTIONER_SECRET_KEYS",
}
ENV_NAMES = {f.name: _RENAMED.get(f.name, f.name.upper()) for f in fields(Settings)}
FIELDS = {var: name for name, var in ENV_NAMES.items()}
# Variables production needs set for every service (docker-compose is checked against this).
REQUIRED_IN_PRODUCTION = ("DATABASE_URL", "BROKER_URL", "S3_BUCKET", "CAPTIONER_SECRET_KEYS")
# CAPTIONER_DEBUG: CLI tracebacks; CAPTIONER_API_KEY: the key the CLI and client send
KNOWN = frozenset(ENV_NAMES.values()) | {"CAPTIONER_DEBUG", "CAPTIONER_API_KEY"}


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment (or `environ`), once; SettingsError names every
    problem."""
    env = os.environ if environ is None else environ
    warn_unknown(env)
    values = {name: env[var] for name, var in ENV_NAMES.items() if env.get(var, "").strip()}
    values["data_dir"] = data_dir = Path(values.get("data_dir", "captioner-data")).absolute()
    values.setdefault("database_url", f"sqlite:///{data_dir / 'captioner.db'}")
    problems = []
    if values["database_url"].startswith("sqlite"):
        values.setdefault("broker_url", "filesystem://")
        values.setdefault("s3_bucket", None)
    else:
        problems = [
            f"{var} must be set when DATABASE_URL points at a server"
            for var in REQUIRED_IN_PRODUCTION
            if FIELDS[var] not in values
        ]
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems += [_describe(error) for error in exc.errors() if error["type"] != "missing"]
    if problems:
        raise SettingsError(problems)
    return settings


def _describe(error: dict) -> str:
    """One pydantic error as "VARIABLE: what is wrong, not 'value'"."""
    var = ENV_NAMES[error["loc"][0]]
    message = error["msg"].removeprefix("Value error, ")
    return f"{var}: {message[:1].lower()}{message[1:]}, not {error['input']!r}"


def warn_unknown(env: Mapping[str, str]) -> list[str]:
    """Warn about variables that look like settings but are none (a typo is ignored otherwise)."""
    unknown = []
    for var in sorted(set(env) - KNOWN):
        close = difflib.get_close_matches(var, KNOWN, n=1, cutoff=0.85)
        if var.startswith(PREFIX) or close:
            hint = f"; did you mean {close[0]}?" if close else ""
            log.warning("%s is not a setting and is ignored%s", var, hint)
            unknown.append(var)
    return unknown


def to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that `from_env` reads back as `settings` (for child processes)."""
    env = {}
    for name, var in ENV_NAMES.items():
        value = getattr(settings, name)
        if name == "webhook_schedule":
            value = ",".join(f"{delay:g}s" for delay in value)
        if value is not None:
            env[var] = str(value)
    return env

"""Settings: the one module that reads the environment.

With nothing set, the embedded mode applies: a SQLite file, a local-directory blob store and
Celery's filesystem broker, all under one data directory, so everything runs with no servers.
Setting `DATABASE_URL` selects production mode, where `BROKER_URL` and `S3_BUCKET` are required
(a missing one fails at start-up, not at the first request).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.errors import SettingsError

# Seconds before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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
    model_bundle: Path | None = None  # MODEL_BUNDLE: bundle directory the workers load
    encoder_weights: str | None = None  # ENCODER_WEIGHTS: override the bundle's encoder source
    batch_max_size: int = 32  # BATCH_MAX_SIZE: most jobs in one forward pass
    batch_max_wait_ms: int = 50  # BATCH_MAX_WAIT_MS: longest wait after a batch's first job
    max_image_bytes: int = 10 * 1024 * 1024  # MAX_IMAGE_BYTES: larger uploads are refused
    max_image_pixels: int = 50_000_000  # MAX_IMAGE_PIXELS: decompression-bomb guard
    job_max_attempts: int = 3  # JOB_MAX_ATTEMPTS: then the job fails for good
    job_lease_seconds: int = 300  # JOB_LEASE_SECONDS: a running job's lease before re-queueing
    sweep_interval_s: float = 30.0  # SWEEP_INTERVAL_S: how often beat runs the sweepers
    webhook_timeout_s: float = 15.0  # WEBHOOK_TIMEOUT_S: an attempt without a 2xx by then fails
    # WEBHOOK_SCHEDULE: delay before each attempt (Standard Webhooks' schedule), e.g. "0,5s,5m"
    webhook_schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    webhook_jitter: float = 0.1  # WEBHOOK_JITTER: each delay is scaled by 1 ± this, at random
    webhook_secret_grace_s: float = (
        86400.0  # WEBHOOK_SECRET_GRACE_S: old secret's life after rotation
    )
    model_poll_s: float = 2.0  # MODEL_POLL_S: how often inference workers look for a new model
    training_lease_s: float = 120.0  # TRAINING_LEASE_S: a silent training worker is dead by then
    training_max_attempts: int = 3  # TRAINING_MAX_ATTEMPTS: worker deaths before a run fails
    max_dataset_bytes: int = 2 * 1024**3  # MAX_DATASET_BYTES: larger archives are refused

    @property
    def embedded(self) -> bool:
        """True when no servers are configured (SQLite, local blobs, filesystem broker)."""
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes) -> Settings:
        """A copy with some fields replaced (tests and the CLI use it)."""
        return replace(self, **changes)


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment (or `environ`), once."""
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("CAPTIONER_DATA_DIR", "captioner-data")).absolute()
    database_url = env.get("DATABASE_URL", f"sqlite:///{data_dir / 'captioner.db'}")
    production = not database_url.startswith("sqlite")
    bundle = env.get("MODEL_BUNDLE")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=_required(env, "BROKER_URL") if production else env.get(
            "BROKER_URL", "filesystem://"),
        s3_bucket=_required(env, "S3_BUCKET") if production else env.get("S3_BUCKET"),
        s3_endpoint_url=env.get("S3_ENDPOINT_URL"),
        s3_region=env.get("AWS_REGION", "us-east-1"),
        s3_access_key=env.get("AWS_ACCESS_KEY_ID"),
        s3_secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
        model_bundle=Path(bundle) if bundle else None,
        encoder_weights=env.get("ENCODER_WEIGHTS"),
        batch_max_size=_int(env, "BATCH_MAX_SIZE", 32),
        batch_max_wait_ms=_int(env, "BATCH_MAX_WAIT_MS", 50),
        max_image_bytes=_int(env, "MAX_IMAGE_BYTES", 10 * 1024 * 1024),
        max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 50_000_000),
        job_max_attempts=_int(env, "JOB_MAX_ATTEMPTS", 3),
        job_lease_seconds=_int(env, "JOB_LEASE_SECONDS", 300),
        sweep_interval_s=_float(env, "SWEEP_INTERVAL_S", 30.0),
        webhook_timeout_s=_float(env, "WEBHOOK_TIMEOUT_S", 15.0),
        webhook_schedule=_schedule(env.get("WEBHOOK_SCHEDULE")) or DEFAULT_SCHEDULE,
        webhook_jitter=_float(env, "WEBHOOK_JITTER", 0.1, low=0.0),
        webhook_secret_grace_s=_float(env, "WEBHOOK_SECRET_GRACE_S", 86400.0, low=0.0),
        model_poll_s=_float(env, "MODEL_POLL_S", 2.0),
        training_lease_s=_float(env, "TRAINING_LEASE_S", 120.0, low=3.0),
        training_max_attempts=_int(env, "TRAINING_MAX_ATTEMPTS", 3),
        max_dataset_bytes=_int(env, "MAX_DATASET_BYTES", 2 * 1024**3),
    )  # fmt: skip


def to_env(settings: Settings) -> dict[str, str]:
    """The environment variables that `from_env` reads back as `settings` (for child processes)."""
    optional = {
        "S3_BUCKET": settings.s3_bucket, "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key,
        "MODEL_BUNDLE": settings.model_bundle, "ENCODER_WEIGHTS": settings.encoder_weights,
    }  # fmt: skip
    env = {
        "CAPTIONER_DATA_DIR": settings.data_dir, "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url, "AWS_REGION": settings.s3_region,
        "BATCH_MAX_SIZE": settings.batch_max_size,
        "BATCH_MAX_WAIT_MS": settings.batch_max_wait_ms,
        "MAX_IMAGE_BYTES": settings.max_image_bytes,
        "MAX_IMAGE_PIXELS": settings.max_image_pixels,
        "JOB_MAX_ATTEMPTS": settings.job_max_attempts,
        "JOB_LEASE_SECONDS": settings.job_lease_seconds,
        "SWEEP_INTERVAL_S": settings.sweep_interval_s,
        "WEBHOOK_TIMEOUT_S": settings.webhook_timeout_s,
        "WEBHOOK_SCHEDULE": ",".join(f"{delay:g}s" for delay in settings.webhook_schedule),
        "WEBHOOK_JITTER": settings.webhook_jitter,
        "WEBHOOK_SECRET_GRACE_S": settings.webhook_secret_grace_s,
        "MODEL_POLL_S": settings.model_poll_s, "TRAINING_LEASE_S": settings.training_lease_s,
        "TRAINING_MAX_ATTEMPTS": settings.training_max_attempts,
        "MAX_DATASET_BYTES": settings.max_dataset_bytes,
    }  # fmt: skip
    env |= {name: value for name, value in optional.items() if value is not None}
    return {name: str(value) for name, value in env.items()}


# Variables production needs set for every service (docker-compose is checked against this).
REQUIRED_IN_PRODUCTION = ("DATABASE_URL", "BROKER_URL", "S3_BUCKET")


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise SettingsError(f"{name} must be set when DATABASE_URL points at a server")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, 1, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float, low: float = 0.001) -> float:
    return _number(env, name, default, float, low, "a number")


def _number(env: Mapping[str, str], name: str, default, kind: type, low, what: str):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {what}, not {raw!r}") from None
    if not value >= low:
        raise SettingsError(f"{name} must be at least {low:g}, not {raw}")
    return value


def _schedule(raw: str | None) -> tuple[float, ...]:
    """'0,5s,5m,2h' as seconds (0, 5, 300, 7200); a bare number is seconds. Empty: ()."""
    if not raw or not raw.strip():
        return ()
    delays = []
    for part in raw.split(","):
        part = part.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h") if part.endswith(u)), "")
        try:
            delays.append(float(part.removesuffix(unit)) * UNITS.get(unit, 1.0))
        except ValueError:
            raise SettingsError(
                f"WEBHOOK_SCHEDULE: {part!r} is not a delay like 0, 5s, 5m or 2h"
            ) from None
    if any(delay < 0 for delay in delays):
        raise SettingsError("WEBHOOK_SCHEDULE: delays cannot be negative")
    return tuple(delays)

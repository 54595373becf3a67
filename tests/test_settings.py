"""Settings: embedded defaults with nothing set; production requires its servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings, SettingsError, from_env, to_env


def test_nothing_set_means_embedded_under_one_data_dir(tmp_path):
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})
    assert settings.embedded
    assert settings.database_url == f"sqlite:///{tmp_path / 'captioner.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.s3_bucket is None and settings.data_dir == tmp_path


@pytest.mark.parametrize("missing", ["BROKER_URL", "S3_BUCKET", "CAPTIONER_SECRET_KEYS"])
def test_production_fails_at_start_without_its_servers(missing):
    env = {
        "DATABASE_URL": "postgresql://db/x",
        "BROKER_URL": "redis://r",
        "S3_BUCKET": "b",
        "CAPTIONER_SECRET_KEYS": "k",
    }
    del env[missing]
    with pytest.raises(SettingsError, match=missing):
        from_env(env)


@pytest.mark.parametrize("value", ["many", "0", "-3"])
def test_bad_numbers_are_named(value):
    with pytest.raises(SettingsError, match="BATCH_MAX_SIZE"):
        from_env({"BATCH_MAX_SIZE": value})


def test_secrets_stay_out_of_the_repr():
    settings = from_env(
        {
            "AWS_SECRET_ACCESS_KEY": "hunter2",
            "AWS_ACCESS_KEY_ID": "AKIA",
            "CAPTIONER_SECRET_KEYS": "fernet",
        }
    )
    assert not {"hunter2", "AKIA", "fernet"} & set(repr(settings).replace("'", " ").split())


@pytest.mark.parametrize(
    "settings",
    [
        Settings(Path("/d"), "sqlite:////d/c.db", "filesystem://", None),
        Settings(
            Path("/d"),
            "postgresql+psycopg2://u:p@h/db",
            "redis://h:6379/0",
            "bucket",
            s3_endpoint_url="http://minio:9000",
            s3_access_key="a",
            s3_secret_key="s",
            model_bundle=Path("/models/current"),
            encoder_weights="seed:3",
            batch_max_size=8,
            batch_max_wait_ms=20,
            job_lease_seconds=60,
            secret_keys="k1,k2",
            rate_limit="5/second",
            max_queued_jobs=7,
            retention_days=1.5,
        ),
    ],
)
def test_child_processes_read_back_the_same_settings(settings):
    assert from_env(to_env(settings)) == settings


def test_every_bad_variable_is_named_at_once():
    env = {
        "BATCH_MAX_SIZE": "abc",
        "JOB_MAX_ATTEMPTS": "0",
        "WEBHOOK_JITTER": "inf",
        "WEBHOOK_SCHEDULE": "0,5x",
        "DATABASE_URL": "postgresql://db/x",
    }
    with pytest.raises(SettingsError) as caught:
        from_env(env)
    named = [problem.split()[0].rstrip(":") for problem in caught.value.problems]
    assert named == [
        "BROKER_URL",
        "S3_BUCKET",
        "CAPTIONER_SECRET_KEYS",
        "BATCH_MAX_SIZE",
        "JOB_MAX_ATTEMPTS",
        "WEBHOOK_SCHEDULE",
        "WEBHOOK_JITTER",
    ]
    assert str(caught.value).startswith("7 bad settings: ")
    assert "'abc'" in str(caught.value) and "'5x' is not a delay" in str(caught.value)


def test_a_misspelt_setting_is_warned_about_not_silently_ignored(caplog, tmp_path):
    env = {
        "CAPTIONER_DATA_DIR": str(tmp_path),
        "BATCH_MAX_SIZ": "4",
        "CAPTIONER_DATADIR": "x",
        "DATABASE_URI": "postgresql://db/x",
        "PATH": "/bin",
        "AWS_DEFAULT_REGION": "eu",
        "CAPTIONER_DEBUG": "1",
        "HOME": "/root",
    }
    with caplog.at_level("WARNING", logger="core.settings"):
        settings = from_env(env)
    assert settings.batch_max_size == 32 and settings.embedded  # ignored, as said
    warned = {record.getMessage() for record in caplog.records}
    assert warned == {
        "BATCH_MAX_SIZ is not a setting and is ignored; did you mean BATCH_MAX_SIZE?",
        "CAPTIONER_DATADIR is not a setting and is ignored; did you mean CAPTIONER_DATA_DIR?",
        "DATABASE_URI is not a setting and is ignored; did you mean DATABASE_URL?",
    }

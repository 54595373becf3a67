"""Settings: embedded defaults with nothing set; production requires its servers."""

from __future__ import annotations

import pytest

from captioner.settings import SettingsError, from_env


def test_nothing_set_means_embedded_under_one_data_dir(tmp_path):
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})
    assert settings.embedded
    assert settings.database_url == f"sqlite:///{tmp_path / 'captioner.db'}"
    assert settings.broker_url == "filesystem://"
    assert settings.s3_bucket is None and settings.data_dir == tmp_path


@pytest.mark.parametrize("missing", ["BROKER_URL", "S3_BUCKET"])
def test_production_fails_at_start_without_its_servers(missing):
    env = {"DATABASE_URL": "postgresql://db/x", "BROKER_URL": "redis://r", "S3_BUCKET": "b"}
    del env[missing]
    with pytest.raises(SettingsError, match=missing):
        from_env(env)


@pytest.mark.parametrize("value", ["many", "0", "-3"])
def test_bad_numbers_are_named(value):
    with pytest.raises(SettingsError, match="BATCH_MAX_SIZE"):
        from_env({"BATCH_MAX_SIZE": value})


def test_secrets_stay_out_of_the_repr():
    settings = from_env({"AWS_SECRET_ACCESS_KEY": "hunter2", "AWS_ACCESS_KEY_ID": "AKIA"})
    assert "hunter2" not in repr(settings) and "AKIA" not in repr(settings)

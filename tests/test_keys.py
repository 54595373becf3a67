"""API keys from the CLI, the embedded mode's local admin key, and secrets at rest (rotation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update

from captioner.keys import local_admin_key
from captioner.service import migrate
from core.credentials import Cipher, hash_api_key
from core.errors import SettingsError
from core.settings import from_env
from store import api_keys, webhook_secrets
from store.db import Database
from store.tables import ApiKey, WebhookSecret, as_utc, utcnow


def cli(data_dir, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    env["CAPTIONER_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "captioner", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )


def test_keys_are_made_listed_and_revoked_from_the_cli(tmp_path):
    made = cli(tmp_path, "keys", "create", "--tenant", "acme", "--scope", "jobs,training")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["scopes"] == ["jobs", "training"] and key["key"].startswith("cap_")
    listed = cli(tmp_path, "keys", "list").stdout
    assert key["id"] in listed and key["prefix"] in listed and key["key"] not in listed
    db = Database(from_env({"CAPTIONER_DATA_DIR": str(tmp_path)}).database_url)
    try:
        with db.session() as session:
            assert api_keys.authenticate(session, key["key"]).tenant == "acme"
        assert cli(tmp_path, "keys", "revoke", key["id"]).returncode == 0
        with db.session() as session:
            assert api_keys.authenticate(session, key["key"]) is None
    finally:
        db.dispose()
    assert "revoked" in cli(tmp_path, "keys", "list", "--tenant", "acme").stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["keys", "create", "--tenant", "t", "--scope", "root"], "scopes must be some of"),
        (["keys", "revoke", str(uuid.UUID(int=1))], "no key"),
    ],
)
def test_cli_mistakes_are_one_clear_line(tmp_path, args, words):
    result = cli(tmp_path, *args)
    assert result.returncode == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_the_embedded_admin_key_is_private_stable_and_remade_for_a_new_database(tmp_path):
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})
    migrate(settings)
    key = local_admin_key(settings)
    path = tmp_path / "api-key"
    assert path.read_text().strip() == key and path.stat().st_mode & 0o777 == 0o600
    assert local_admin_key(settings) == key
    (tmp_path / "captioner.db").unlink()  # a new database: the old key means nothing there
    migrate(settings)
    assert local_admin_key(settings) != key


def test_only_the_digest_of_a_key_is_stored(tmp_path):
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})
    migrate(settings)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            row, key = api_keys.create_key(session, "t", ["jobs"])
            assert row.key_hash == hash_api_key(key) and key not in str(vars(row))
    finally:
        db.dispose()


def test_last_use_is_noted_at_most_once_a_minute(tmp_path):
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})  # SQLite: naive timestamps
    migrate(settings)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            row, key = api_keys.create_key(session, "t", ["jobs"])
        for _ in range(2):
            with db.session() as session:
                assert api_keys.authenticate(session, key).tenant == "t"
        long_ago = utcnow() - timedelta(hours=1)
        with db.session() as session:
            session.execute(update(ApiKey).values(last_used_at=long_ago))
        with db.session() as session:
            api_keys.authenticate(session, key)
        with db.session() as session:
            assert as_utc(api_keys.get_key(session, row.id).last_used_at) > long_ago
    finally:
        db.dispose()


def test_secrets_survive_a_key_rotation_and_the_old_key_can_go(tmp_path):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})
    migrate(settings)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            clear = webhook_secrets.secrets_in_use(session, "t", Cipher(old))[0].secret
            session.add(WebhookSecret(owner="u", secret="whsec_c2VjcmV0"))  # stored before 0006
        with db.session() as session:
            assert webhook_secrets.reencrypt(session, Cipher(f"{new},{old}")) == 2
        with db.session() as session:
            assert webhook_secrets.secrets_in_use(session, "t", Cipher(new))[0].secret == clear
            assert webhook_secrets.secrets_in_use(session, "u", Cipher(new))[0].secret == (
                "whsec_c2VjcmV0"
            )
            stored = list(session.scalars(select(WebhookSecret.secret)))
            assert len(stored) == 2 and not any(s.startswith("whsec_") for s in stored)
        with db.session() as session, pytest.raises(SettingsError, match="no key decrypts"):
            webhook_secrets.secrets_in_use(session, "t", Cipher(old))
    finally:
        db.dispose()


def test_a_rotated_secret_stays_valid_for_its_grace(tmp_path):
    settings = from_env({"CAPTIONER_DATA_DIR": str(tmp_path)})
    migrate(settings)
    cipher, db = Cipher(Fernet.generate_key().decode()), Database(settings.database_url)
    try:
        with db.session() as session:
            first = webhook_secrets.secrets_in_use(session, "t", cipher)[0].secret
            rotated = webhook_secrets.rotate(session, "t", timedelta(hours=1), cipher)
        assert [s.secret for s in rotated][1] == first and rotated[0].secret != first
    finally:
        db.dispose()

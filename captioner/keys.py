"""`captioner keys create | list | revoke`, `captioner secrets rotate`, and the embedded mode's
local admin key (made on first start, kept in the data directory, readable by its owner only)."""

from __future__ import annotations

import argparse
import json
import uuid

from core.credentials import cipher_for, write_private
from core.settings import Settings, from_env
from store import api_keys, webhook_secrets
from store.db import Database
from store.migrate import upgrade
from store.payloads import key_json
from store.tables import ALL_SCOPES

SCOPES = ",".join(ALL_SCOPES)
LOCAL_TENANT = "local"
KEY_FILE = "api-key"


def add_commands(commands) -> None:
    """Register `keys` and `secrets` on the CLI's subparsers."""
    keys = commands.add_parser(
        "keys",
        help="API keys: create, list, revoke",
        epilog="example: captioner keys create --tenant acme --scope jobs",
    ).add_subparsers(required=True)
    create = keys.add_parser("create", help="make a key; it is printed once, never stored")
    create.add_argument("--tenant", required=True, help="whose data the key reaches")
    create.add_argument("--scope", default="jobs", help=f"comma-separated, from {SCOPES}")
    create.add_argument("--name", default="", help="a note to tell keys apart")
    create.set_defaults(run=run_create)
    listing = keys.add_parser("list", help="keys with their scopes and last use (not the keys)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.set_defaults(run=run_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its id: it gets 401 from now on")
    revoke.add_argument("id", type=uuid.UUID)
    revoke.set_defaults(run=run_revoke)
    secrets = commands.add_parser("secrets", help="secrets at rest").add_subparsers(required=True)
    rotate = secrets.add_parser(
        "rotate", help="re-encrypt every webhook secret with the first key of CAPTIONER_SECRET_KEYS"
    )
    rotate.set_defaults(run=run_rotate)


def database(settings: Settings) -> Database:
    """The settings' database, migrated first."""
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    return Database(settings.database_url)


def run_create(args: argparse.Namespace) -> None:
    """Print a new key's id and the key itself (the only time it is shown)."""
    scopes = [s.strip() for s in args.scope.split(",") if s.strip()]
    db = database(from_env())
    try:
        with db.session() as session:
            row, key = api_keys.create_key(session, args.tenant, scopes, args.name)
            print(json.dumps(key_json(row) | {"key": key}, indent=1))
    finally:
        db.dispose()


def run_list(args: argparse.Namespace) -> None:
    """One line per key."""
    db = database(from_env())
    try:
        with db.session() as session:
            for row in api_keys.list_keys(session, args.tenant):
                state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
                used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
                print(
                    f"{row.id}  {row.prefix}…  {row.tenant:<16} {','.join(row.scopes):<20} "
                    f"last used {used:<16}  {state}  {row.name}"
                )
    finally:
        db.dispose()


def run_revoke(args: argparse.Namespace) -> None:
    """Revoke one key."""
    db = database(from_env())
    try:
        with db.session() as session:
            if api_keys.revoke(session, args.id) is None:
                raise ValueError(f"no key {args.id}")
    finally:
        db.dispose()
    print(f"revoked {args.id}")


def run_rotate(_args: argparse.Namespace) -> None:
    """Encrypt every stored webhook secret again with the first key."""
    settings = from_env()
    db = database(settings)
    try:
        with db.session() as session:
            count = webhook_secrets.reencrypt(session, cipher_for(settings))
    finally:
        db.dispose()
    print(f"re-encrypted {count} webhook secrets with the first key; older keys can now go")


def local_admin_key(settings: Settings) -> str:
    """The embedded mode's admin key, kept in data_dir/api-key (mode 0600); made on first start,
    and made again when the file's key is not in the database (a new database)."""
    path = settings.data_dir / KEY_FILE
    db = Database(settings.database_url)
    try:
        if path.exists():
            with db.session() as session:
                if api_keys.authenticate(session, path.read_text().strip()) is not None:
                    return path.read_text().strip()
            path.unlink()
        with db.session() as session:
            _, key = api_keys.create_key(session, LOCAL_TENANT, ALL_SCOPES, "local admin")
    finally:
        db.dispose()
    write_private(path, key)
    return key

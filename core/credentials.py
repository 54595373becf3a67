"""API keys (made, shown once, kept as a hash) and the cipher that keeps secrets at rest.

A key is `cap_` + 43 characters of base64url (256 random bits). It is stored as its SHA-256
digest: a slow password hash (bcrypt, Argon2) protects guessable secrets, and a random 256-bit
key is not guessable, while every request must check its key in well under a millisecond.

Webhook signing secrets must be read back in clear to sign with, so they are encrypted with
Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`). `CAPTIONER_SECRET_KEYS` lists the
keys: the first encrypts, every one decrypts, so a new key is put first, every value re-encrypted
(`captioner secrets rotate`), then the old key dropped.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.errors import SettingsError
from core.settings import Settings

KEY_PREFIX = "cap_"
SHOWN_PREFIX = 12  # characters of a key that listings show, to tell keys apart
CLEAR_PREFIX = "whsec_"  # a webhook secret written before encryption (read, then rotated)


def new_api_key() -> str:
    """A fresh API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The hex SHA-256 digest an API key is stored and looked up by."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Cipher:
    """Encrypts and decrypts short secrets with the first of several Fernet keys."""

    def __init__(self, keys: str) -> None:
        try:
            self._fernet = MultiFernet([Fernet(k.strip()) for k in keys.split(",") if k.strip()])
        except ValueError as exc:
            raise SettingsError([f"CAPTIONER_SECRET_KEYS: {exc}"]) from None

    def encrypt(self, clear: str) -> str:
        """A token (text) for `clear`."""
        return self._fernet.encrypt(clear.encode()).decode()

    def decrypt(self, stored: str) -> str:
        """The clear text of a token (a value stored before encryption passes as it is)."""
        if stored.startswith(CLEAR_PREFIX):
            return stored
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except InvalidToken:
            raise SettingsError(
                [
                    "CAPTIONER_SECRET_KEYS: no key decrypts a stored secret (was "
                    "the key that encrypted it dropped?)"
                ]
            ) from None

    def seal(self, data: bytes) -> bytes:
        """`data` encrypted (an answer kept for replay may hold a new API key)."""
        return self._fernet.encrypt(data)

    def unseal(self, token: bytes) -> bytes:
        """The bytes `seal` encrypted."""
        return self._fernet.decrypt(token)

    def rotate(self, stored: str) -> str:
        """The value encrypted again with the first key (clear values get encrypted)."""
        return self.encrypt(self.decrypt(stored))


def local_secret_keys(data_dir: Path) -> str:
    """The embedded mode's Fernet key in data_dir/secret.key, made (mode 0600) on first use."""
    path = data_dir / "secret.key"
    write_private(path, Fernet.generate_key().decode())
    return path.read_text().strip()


def write_private(path: Path, text: str) -> bool:
    """Write `text` to a new file only its owner can read; False if the file already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    return True


def cipher_for(settings: Settings) -> Cipher:
    """The cipher of `settings` (the embedded mode's local key when none is set)."""
    if settings.secret_keys:
        return Cipher(settings.secret_keys)
    if not settings.embedded:
        raise SettingsError(
            ["CAPTIONER_SECRET_KEYS must be set when DATABASE_URL points at a server"]
        )
    return Cipher(local_secret_keys(settings.data_dir))

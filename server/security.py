"""Secrets: password hashing and random tokens.

Tokens are 256-bit URL-safe strings; only their SHA-256 is stored, so a leaked database does not
leak live links or sign-ins.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# A fixed hash to verify against when the email is unknown, so response time does not reveal
# which accounts exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def burn_verify(password: str) -> None:
    verify_password(_DUMMY_HASH, password)


_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


def valid_email(email: str) -> bool:
    """A deliberately plain check: accounts are created by admins, not by strangers, and
    internal domains (``.test``, ``.internal``) are legitimate on a self-hosted server."""
    return len(email) <= 320 and _EMAIL.match(email) is not None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    return secrets.token_hex(8)

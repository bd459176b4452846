"""Secrets: password hashing and random tokens.

Tokens are 256-bit URL-safe strings; only their SHA-256 is stored, so a leaked database does not
leak live links or sign-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .settings import usable_cores

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10


def _lower_priority() -> None:
    """Run hashing at the lowest CPU priority (Linux niceness is per thread): on a busy
    machine the event loop serving live sessions wins the core, sign-ins wait."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


# argon2 costs ~0.15-0.8 s of CPU a call and releases the GIL: run on the event loop, a handful
# of sign-in attempts stall every live session's signalling. Hashing gets every usable core but
# one (the event loop's), at most; extra attempts queue here, not on the loop.
_argon2_pool = ThreadPoolExecutor(
    max_workers=max(1, usable_cores() - 1), thread_name_prefix="argon2", initializer=_lower_priority
)


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


async def hash_password_async(password: str) -> str:
    """``hash_password`` off the event loop, for request handlers."""
    return await asyncio.get_running_loop().run_in_executor(_argon2_pool, hash_password, password)


async def verify_password_async(password_hash: str, password: str) -> bool:
    """``verify_password`` off the event loop, for request handlers."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_argon2_pool, verify_password, password_hash, password)


async def burn_verify_async(password: str) -> None:
    await verify_password_async(_DUMMY_HASH, password)


_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


def valid_email(email: str) -> bool:
    """A deliberately plain check: accounts are created by admins, not by strangers, and
    internal domains (``.test``, ``.internal``) are legitimate on a self-hosted server."""
    return len(email) <= 320 and _EMAIL.match(email) is not None


# Control characters (browsers drop tab and newline inside URLs: "/\t/evil" becomes "//evil")
# and backslashes (read as "/" by browsers) have no place in a local path to return to.
_UNSAFE_IN_NEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def safe_next(value: str | None) -> str | None:
    """The path to return to after sign-in, if it stays on this site; otherwise None."""
    if not value or len(value) > 2000 or _UNSAFE_IN_NEXT.search(value):
        return None
    if not value.startswith("/") or value.startswith("//"):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path.startswith("/login"):
        return None
    return value


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    return secrets.token_hex(8)

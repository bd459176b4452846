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
from pathlib import Path
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
# which accounts exist. A literal at ``_hasher``'s cost (tests/test_security_passwords.py keeps
# the two equal), not hashed at import: that cost every `rapport` command and server start an
# argon2 hash (~0.5 s on a busy machine) before it did anything.
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$+WHb+SHUrp5y4CcB/iUnYg"
    "$gUla/vvYUO8vSc9aGiR7tCNasp+8ab5d+Clzyx087Vs"
)


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


_COMMON = frozenset(
    line.strip().lower()
    for line in (Path(__file__).with_name("common_passwords.txt")).read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
# Words that, with some digits or symbols around them, make the guesses tried first.
_GUESSABLE_WORDS = frozenset(
    "password passw0rd p@ssword p@ssw0rd qwerty qwertz azerty letmein welcome admin "
    "administrator iloveyou monkey dragon football baseball princess sunshine master "
    "rapport therapy therapist changeme secret login".split()
)
_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "abcdefghijklmnopqrstuvwxyz")


def password_problem(password: str, email: str = "") -> str | None:
    """Why a new password is too easy to guess, as a sentence for the person choosing it."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password needs at least {MIN_PASSWORD_LENGTH} characters."
    lowered = password.lower()
    if password.isdigit():
        return "The password cannot be only digits; a short sentence is easier to remember."
    if lowered in _COMMON:
        return "This password is one of the most common ones; choose another."
    if len(set(lowered)) <= 2:
        return "The password repeats the same characters; choose something less predictable."
    if any(lowered in row or lowered in row[::-1] for row in _ROWS):
        return "The password is a run of keys or letters; choose something less predictable."
    core = lowered.strip("0123456789!@#$%^&*?.,-_ ")
    if core in _GUESSABLE_WORDS:
        return "The password is a common word with digits or symbols added; choose another."
    address = email.strip().lower()
    local = address.split("@", 1)[0]
    if address and (lowered == address or (len(local) >= 3 and core == local)):
        return "The password cannot be your email address."
    return None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    return secrets.token_hex(8)

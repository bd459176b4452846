"""Two-factor sign-in: TOTP codes (RFC 6238, via pyotp), recovery codes, pending sign-ins and
the admins' "require two-factor for all staff" setting.

A sign-in with TOTP has two steps. The password step ends with a pending-login token instead
of a session cookie: an HMAC-signed note of who passed the password, until when, and under
which ``User.login_epoch``. Completing a sign-in bumps the epoch in the same UPDATE that checks
it, so a token works once, and a guessed code cannot be replayed in a race. The signing key is
generated once and kept in the database, so every node behind one address accepts the tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AppSetting, RecoveryCode, User
from .security import token_hash

ISSUER = "Rapport"
STEP_S = 30
# Codes from the step before and after the current one are accepted: phone clocks drift, and
# a code typed in its last seconds arrives in the next step.
WINDOW = 1
PENDING_LOGIN_S = 300
RECOVERY_CODES = 10
REQUIRE_TWO_FACTOR = "require_two_factor"
_SIGNING_KEY = "pending_login_key"
# Recovery codes use an alphabet without look-alikes (no 0/o, 1/l/i): read off paper.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_RECOVERY_LENGTH = 10


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP_S)


def normalise_code(code: str) -> str:
    return "".join(ch for ch in code if not ch.isspace() and ch != "-").lower()


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code this is, within the window around now; None if none is."""
    code = normalise_code(code)
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    step = current_step(now)
    found = None
    # Every candidate is compared (constant work whatever matches).
    for candidate in range(step - WINDOW, step + WINDOW + 1):
        if hmac.compare_digest(totp.at(candidate * STEP_S), code):
            found = candidate
    return found


def looks_like_totp(code: str) -> bool:
    normalised = normalise_code(code)
    return len(normalised) == 6 and normalised.isdigit()


def new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def recovery_hash(code: str) -> str:
    return token_hash(normalise_code(code))


async def replace_recovery_codes(db: AsyncSession, user: User) -> list[str]:
    """New codes (the old ones stop working); the plain codes exist only in the return value."""
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = new_recovery_codes()
    for code in codes:
        db.add(RecoveryCode(user_id=user.id, code_hash=recovery_hash(code)))
    return codes


async def recovery_codes_left(db: AsyncSession, user: User) -> int:
    count = await db.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
    )
    return int(count or 0)


async def use_recovery_code(db: AsyncSession, user: User, code: str) -> bool:
    """Spend one unused recovery code, atomically: of two concurrent uses one wins."""
    normalised = normalise_code(code)
    if len(normalised) != _RECOVERY_LENGTH:
        return False
    spent = await db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == token_hash(normalised),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=datetime.now(UTC))
    )
    return bool(spent.rowcount == 1)  # type: ignore[attr-defined]


async def accept_step(db: AsyncSession, user: User, step: int) -> bool:
    """Record ``step`` as used unless it (or a later one) already was: a code signs in once."""
    done = await db.execute(
        update(User)
        .where(
            User.id == user.id,
            or_(User.totp_last_step.is_(None), User.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def is_enrolled(user: User) -> bool:
    return user.totp_secret is not None and user.totp_enabled_at is not None


async def clear_two_factor(db: AsyncSession, user_id: int) -> None:
    """Turn two-factor off for a user: secret, pending enrolment, recovery codes, and any
    pending sign-in (the epoch moves on)."""
    await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            totp_secret=None,
            totp_pending_secret=None,
            totp_enabled_at=None,
            totp_last_step=None,
            login_epoch=func.coalesce(User.login_epoch, 0) + 1,
        )
    )
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


# ---------- server-wide settings ----------


async def get_setting(db: AsyncSession, key: str, default: object = None) -> object:
    row = await db.get(AppSetting, key)
    return default if row is None else row.value


async def set_setting(db: AsyncSession, key: str, value: object) -> None:
    row = await db.get(AppSetting, key)
    if row is None:
        db.add(AppSetting(key=key, value=value))
    else:
        row.value = value
        row.updated_at = datetime.now(UTC)


async def two_factor_required(db: AsyncSession) -> bool:
    return bool(await get_setting(db, REQUIRE_TWO_FACTOR, False))


async def enrolment_required(db: AsyncSession, user: User) -> bool:
    """Whether this user must enrol before anything else (the admins require it)."""
    return not is_enrolled(user) and await two_factor_required(db)


# ---------- pending sign-ins ----------


async def _signing_key(db: AsyncSession) -> bytes:
    stored = await get_setting(db, _SIGNING_KEY)
    if isinstance(stored, str):
        return base64.urlsafe_b64decode(stored)
    key = secrets.token_bytes(32)
    db.add(AppSetting(key=_SIGNING_KEY, value=base64.urlsafe_b64encode(key).decode()))
    try:
        await db.commit()
    except IntegrityError:  # another request or node made it first: use theirs
        await db.rollback()
        return await _signing_key(db)
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


async def issue_pending_login(db: AsyncSession, user: User, now: float | None = None) -> str:
    payload = _b64(
        json.dumps(
            {
                "uid": user.id,
                "epoch": user.login_epoch or 0,
                "exp": int((time.time() if now is None else now) + PENDING_LOGIN_S),
                "n": secrets.token_hex(8),
            },
            separators=(",", ":"),
        ).encode()
    )
    return f"{payload}.{_sign(await _signing_key(db), payload)}"


@dataclass(frozen=True)
class PendingLogin:
    user_id: int
    epoch: int


async def read_pending_login(db: AsyncSession, token: str) -> PendingLogin | None:
    """The pending sign-in this token stands for, if its signature holds and it has not
    expired. Whether it was already used is decided by ``complete_pending_login``."""
    payload, _, signature = token.partition(".")
    if not payload or not signature:
        return None
    if not hmac.compare_digest(_sign(await _signing_key(db), payload), signature):
        return None
    try:
        data = json.loads(_unb64(payload))
        user_id, epoch, expires = int(data["uid"]), int(data["epoch"]), int(data["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if expires < time.time():
        return None
    return PendingLogin(user_id=user_id, epoch=epoch)


async def complete_pending_login(db: AsyncSession, pending: PendingLogin) -> bool:
    """Use the pending sign-in up: one UPDATE checks and bumps the epoch, so of two requests
    with the same token exactly one gets through."""
    done = await db.execute(
        update(User)
        .where(User.id == pending.user_id, func.coalesce(User.login_epoch, 0) == pending.epoch)
        .values(login_epoch=func.coalesce(User.login_epoch, 0) + 1)
    )
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]

"""Sign-in, sign-out and first-run setup."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import delete, func, select, update

from .. import totp
from ..audit import record
from ..auth import (
    LOGIN_COOKIE,
    CurrentUser,
    DbSession,
    SettingsDep,
    SignedInUser,
    create_login,
)
from ..logs import pseudonym
from ..models import LoginSession, SetupToken, User, UserRole
from ..security import (
    MIN_PASSWORD_LENGTH,
    burn_verify_async,
    hash_password_async,
    password_problem,
    token_hash,
    valid_email,
    verify_password_async,
)
from ..settings import Settings
from ..throttle import LoginThrottle

router = APIRouter(prefix="/api", tags=["auth"])
log = logging.getLogger("rapport.auth")


class LoginBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class UserOut(BaseModel):
    id: int
    email: str
    display_name: str
    role: str

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id, email=user.email, display_name=user.display_name, role=str(user.role)
        )


class UserEnvelope(BaseModel):
    user: UserOut


class LoginResult(BaseModel):
    """Either signed in (``user``, and the cookie is set) or one step short of it:
    ``code_required`` with a ``pending_token`` for ``POST /api/login/code``."""

    user: UserOut | None = None
    code_required: bool = False
    pending_token: str | None = None
    pending_expires_in: int | None = None
    # Signed in, but the admins require two-factor and this account has none yet: every API
    # but the account's answers 403 ``two_factor_enrolment_required`` until it is set up.
    enrolment_required: bool = False


class CodeBody(BaseModel):
    pending_token: str = Field(max_length=1000)
    # A 6-digit code from the authenticator app, or one of the recovery codes.
    code: str = Field(min_length=1, max_length=64)


class SetupBody(BaseModel):
    token: str = Field(max_length=200)
    email: str = Field(max_length=320)
    password: str = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    display_name: str = Field(default="", max_length=200)
    role: Literal["therapist", "admin"] = "therapist"

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not valid_email(value.strip()):
            raise ValueError("that does not look like an email address")
        return value.strip().lower()

    @model_validator(mode="after")
    def _password(self) -> SetupBody:
        problem = password_problem(self.password, self.email)
        if problem:
            raise PydanticCustomError("weak_password", problem)
        return self


def set_login_cookie(response: Response, settings: Settings, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
        max_age=int(settings.login_idle_minutes * 60 * 24),
    )


def _too_many(wait: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"Too many sign-in attempts. Try again in {wait} seconds.",
        headers={"Retry-After": str(wait)},
    )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _signed_in(
    db: DbSession, user: User, response: Response, settings: Settings, detail: str = ""
) -> LoginResult:
    record(db, "login", f"user:{user.id}", detail=detail)
    token = await create_login(db, user)
    set_login_cookie(response, settings, token)
    return LoginResult(
        user=UserOut.of(user), enrolment_required=await totp.enrolment_required(db, user)
    )


def _log_failed_login(reason: str, **who: object) -> None:
    """Never the password nor the email: a user id, or for an unknown address its pseudonym
    (so a run of guesses at one address still shows as one)."""
    log.info("sign-in failed: %s", reason, extra={"event": "login_failed", **who})


@router.post("/login")
async def login(
    body: LoginBody, request: Request, response: Response, db: DbSession, settings: SettingsDep
) -> LoginResult:
    email = body.email.strip().lower()
    throttle: LoginThrottle = request.app.state.login_throttle
    wait = await throttle.attempt(_address(request), email)
    if wait is not None:
        raise _too_many(wait)
    user = await db.scalar(select(User).where(func.lower(User.email) == email))
    # End the read transaction before the slow hash: an open SQLite read holds back writers.
    await db.commit()
    if user is None:
        await burn_verify_async(body.password)
        _log_failed_login("no such account", account=pseudonym(email))
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Email or password is incorrect.")
    if not await verify_password_async(user.password_hash, body.password):
        _log_failed_login("wrong password", user_id=user.id)
        if await throttle.audit_failure(email):
            record(db, "login_failed", f"user:{user.id}")
            await db.commit()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Email or password is incorrect.")
    if totp.is_enrolled(user):
        # No cookie yet: the password alone signs nobody in.
        return LoginResult(
            code_required=True,
            pending_token=await totp.issue_pending_login(db, user),
            pending_expires_in=totp.PENDING_LOGIN_S,
        )
    return await _signed_in(db, user, response, settings)


PENDING_GONE = "This sign-in has expired or was already used. Enter your password again."


@router.post("/login/code")
async def login_code(
    body: CodeBody, request: Request, response: Response, db: DbSession, settings: SettingsDep
) -> LoginResult:
    """The second step: a current code from the app, or an unused recovery code."""
    pending = await totp.read_pending_login(db, body.pending_token)
    user = await db.get(User, pending.user_id) if pending else None
    if (
        pending is None
        or user is None
        or not totp.is_enrolled(user)
        or (user.login_epoch or 0) != pending.epoch  # used (re-checked atomically below)
    ):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, PENDING_GONE)
    # Read before any rollback: a rollback expires the loaded user.
    email, actor = user.email.lower(), f"user:{user.id}"
    # Wrong codes count against the same budgets as wrong passwords.
    throttle: LoginThrottle = request.app.state.login_throttle
    wait = await throttle.attempt(_address(request), email)
    if wait is not None:
        raise _too_many(wait)
    detail = "two-factor"
    accepted = False
    if totp.looks_like_totp(body.code):
        step = totp.matching_step(user.totp_secret or "", body.code)
        accepted = step is not None and await totp.accept_step(db, user, step)
    elif await totp.use_recovery_code(db, user, body.code):
        accepted = True
        detail = "recovery code"
    if not accepted:
        await db.rollback()
        if await throttle.audit_failure(email):
            record(db, "login_code_failed", actor)
            await db.commit()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "That code is not valid. Codes change every 30 seconds and work once; "
            "wait for the next one, or use a recovery code.",
        )
    if not await totp.complete_pending_login(db, pending):
        await db.rollback()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, PENDING_GONE)
    if detail == "recovery code":
        left = await totp.recovery_codes_left(db, user)
        record(db, "recovery_code_used", actor, detail=f"{left} left")
    return await _signed_in(db, user, response, settings, detail=detail)


async def _close_sockets(
    request: Request, login_hash: str | None = None, user_id: int | None = None
) -> None:
    """A socket was authenticated once, when it opened: signing out must reach it too, here
    and on every other node (its room may be hosted anywhere in a cluster)."""
    await request.app.state.rooms.sign_out(login_hash=login_hash, user_id=user_id)
    if request.app.state.cluster is not None:
        await request.app.state.cluster.remote_sign_out(login_hash=login_hash, user_id=user_id)


@router.post("/logout", status_code=204)
async def logout(request: Request, response: Response, db: DbSession) -> Response:
    token = request.cookies.get(LOGIN_COOKIE)
    if token:
        hashed = token_hash(token)
        await db.execute(delete(LoginSession).where(LoginSession.token_hash == hashed))
        await db.commit()
        await _close_sockets(request, login_hash=hashed)
    response.status_code = 204
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout-all", status_code=204)
async def logout_all(
    request: Request, response: Response, user: SignedInUser, db: DbSession
) -> Response:
    """Sign out everywhere: every login of this user is deleted (the cookie is only a key to
    a row, so no row means no sign-in), and ``login_epoch`` moves on so that a sign-in waiting
    for its two-factor code cannot complete either. Open session sockets are closed."""
    await db.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    await db.execute(
        update(User)
        .where(User.id == user.id)
        .values(login_epoch=func.coalesce(User.login_epoch, 0) + 1)
    )
    record(db, "logout_all", f"user:{user.id}")
    await db.commit()
    await _close_sockets(request, user_id=user.id)
    response.status_code = 204
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.get("/me")
async def me(user: CurrentUser) -> UserEnvelope:
    return UserEnvelope(user=UserOut.of(user))


# ---------- two-factor enrolment, from the signed-in user's account page ----------


class TwoFactorStatus(BaseModel):
    user: UserOut
    enabled: bool
    enabled_at: datetime | None
    recovery_codes_left: int
    # The admins require two-factor for all staff.
    required: bool


class TwoFactorSetup(BaseModel):
    """A new secret, not yet in force: ``confirm`` with a current code turns it on."""

    secret: str
    otpauth_uri: str


class ConfirmBody(BaseModel):
    code: str = Field(min_length=1, max_length=64)


class RecoveryCodes(BaseModel):
    """Shown once: only hashes are kept."""

    recovery_codes: list[str]


class DisableBody(BaseModel):
    code: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=1024)


async def _status(db: DbSession, user: User) -> TwoFactorStatus:
    return TwoFactorStatus(
        user=UserOut.of(user),
        enabled=totp.is_enrolled(user),
        enabled_at=user.totp_enabled_at,
        recovery_codes_left=await totp.recovery_codes_left(db, user),
        required=await totp.two_factor_required(db),
    )


@router.get("/account/two-factor")
async def two_factor_status(user: SignedInUser, db: DbSession) -> TwoFactorStatus:
    return await _status(db, user)


@router.post("/account/two-factor/setup")
async def two_factor_setup(user: SignedInUser, db: DbSession) -> TwoFactorSetup:
    if totp.is_enrolled(user):
        raise HTTPException(
            status.HTTP_409_CONFLICT, "Two-factor sign-in is already on; turn it off first."
        )
    secret = totp.new_secret()
    user.totp_pending_secret = secret
    await db.commit()
    return TwoFactorSetup(secret=secret, otpauth_uri=totp.provisioning_uri(secret, user.email))


async def _throttled(request: Request, user: User) -> None:
    """Codes and passwords typed on the account page are guesses too."""
    throttle: LoginThrottle = request.app.state.login_throttle
    wait = await throttle.attempt(_address(request), user.email.lower())
    if wait is not None:
        raise _too_many(wait)


@router.post("/account/two-factor/confirm")
async def two_factor_confirm(
    body: ConfirmBody, request: Request, user: SignedInUser, db: DbSession
) -> RecoveryCodes:
    if totp.is_enrolled(user):
        raise HTTPException(status.HTTP_409_CONFLICT, "Two-factor sign-in is already on.")
    secret = user.totp_pending_secret
    if secret is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "Start the set-up first.")
    await _throttled(request, user)
    step = totp.matching_step(secret, body.code)
    if step is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "That code does not match. Check the phone's time and enter the code shown now.",
        )
    user.totp_secret = secret
    user.totp_pending_secret = None
    user.totp_enabled_at = datetime.now(UTC)
    user.totp_last_step = step  # the code just typed cannot also sign in
    codes = await totp.replace_recovery_codes(db, user)
    record(db, "two_factor_enabled", f"user:{user.id}")
    await db.commit()
    return RecoveryCodes(recovery_codes=codes)


@router.post("/account/two-factor/recovery-codes")
async def two_factor_new_recovery_codes(
    body: ConfirmBody, request: Request, user: SignedInUser, db: DbSession
) -> RecoveryCodes:
    """Ten new recovery codes for a current code; the old ones stop working."""
    if not totp.is_enrolled(user):
        raise HTTPException(status.HTTP_409_CONFLICT, "Two-factor sign-in is not on.")
    await _throttled(request, user)
    step = totp.matching_step(user.totp_secret or "", body.code)
    if step is None or not await totp.accept_step(db, user, step):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "That code is not valid.")
    codes = await totp.replace_recovery_codes(db, user)
    record(db, "recovery_codes_replaced", f"user:{user.id}")
    await db.commit()
    return RecoveryCodes(recovery_codes=codes)


@router.post("/account/two-factor/disable")
async def two_factor_disable(
    body: DisableBody, request: Request, user: SignedInUser, db: DbSession
) -> TwoFactorStatus:
    """Needs a current code or the password: a browser left signed in is not enough."""
    if not totp.is_enrolled(user):
        raise HTTPException(status.HTTP_409_CONFLICT, "Two-factor sign-in is not on.")
    if not body.code and not body.password:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "Enter a current code or your password."
        )
    await _throttled(request, user)
    proved = False
    if body.code:
        step = totp.matching_step(user.totp_secret or "", body.code)
        proved = step is not None and await totp.accept_step(db, user, step)
    if not proved and body.password:
        await db.commit()  # no transaction open across the slow hash
        proved = await verify_password_async(user.password_hash, body.password)
    if not proved:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "That code or password is not right."
        )
    await totp.clear_two_factor(db, user.id)
    record(db, "two_factor_disabled", f"user:{user.id}", detail="by the user")
    await db.commit()
    await db.refresh(user)
    return await _status(db, user)


async def _valid_setup(db: DbSession, token: str) -> SetupToken:
    if await db.scalar(select(func.count()).select_from(User)):
        raise HTTPException(status.HTTP_410_GONE, "Setup is complete; sign in instead.")
    row = await db.get(SetupToken, token_hash(token))
    if row is None or row.used_at is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This setup link is not valid.")
    if row.expires_at < datetime.now(UTC):
        raise HTTPException(
            status.HTTP_410_GONE, "This setup link has expired; restart the server."
        )
    return row


class SetupCheck(BaseModel):
    """Only ever ``true``: an invalid link answers 404 or 410 instead."""

    valid: bool


@router.get("/setup/{token}")
async def setup_check(token: str, db: DbSession) -> SetupCheck:
    await _valid_setup(db, token)
    return SetupCheck(valid=True)


@router.post("/setup", status_code=201)
async def setup(
    body: SetupBody, response: Response, db: DbSession, settings: SettingsDep
) -> UserEnvelope:
    await _valid_setup(db, body.token)
    await db.commit()  # end the read: the claim below must be the transaction's first write
    password_hash = await hash_password_async(body.password)
    # Claim the link in one statement: of concurrent uses exactly one changes the row.
    claimed = await db.execute(
        update(SetupToken)
        .where(SetupToken.token_hash == token_hash(body.token), SetupToken.used_at.is_(None))
        .values(used_at=datetime.now(UTC))
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        await db.rollback()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This setup link is not valid.")
    user = User(
        email=str(body.email).lower(),
        display_name=body.display_name,
        role=UserRole(body.role),
        password_hash=password_hash,
    )
    db.add(user)
    await db.flush()
    record(db, "user_created", f"user:{user.id}", detail=f"first account, role {body.role}")
    token = await create_login(db, user)
    set_login_cookie(response, settings, token)
    return UserEnvelope(user=UserOut.of(user))

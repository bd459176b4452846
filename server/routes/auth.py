"""Sign-in, sign-out and first-run setup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import delete, func, select, update

from ..audit import record
from ..auth import LOGIN_COOKIE, CurrentUser, DbSession, SettingsDep, create_login
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


@router.post("/login")
async def login(
    body: LoginBody, request: Request, response: Response, db: DbSession, settings: SettingsDep
) -> UserEnvelope:
    email = body.email.strip().lower()
    throttle: LoginThrottle = request.app.state.login_throttle
    address = request.client.host if request.client else "unknown"
    wait = await throttle.attempt(address, email)
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many sign-in attempts. Try again in {wait} seconds.",
            headers={"Retry-After": str(wait)},
        )
    user = await db.scalar(select(User).where(func.lower(User.email) == email))
    # End the read transaction before the slow hash: an open SQLite read holds back writers.
    await db.commit()
    if user is None:
        await burn_verify_async(body.password)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Email or password is incorrect.")
    if not await verify_password_async(user.password_hash, body.password):
        if await throttle.audit_failure(email):
            record(db, "login_failed", f"user:{user.id}")
            await db.commit()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Email or password is incorrect.")
    record(db, "login", f"user:{user.id}")
    token = await create_login(db, user)
    set_login_cookie(response, settings, token)
    return UserEnvelope(user=UserOut.of(user))


@router.post("/logout", status_code=204)
async def logout(request: Request, response: Response, db: DbSession) -> Response:
    token = request.cookies.get(LOGIN_COOKIE)
    if token:
        await db.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash(token)))
        await db.commit()
    response.status_code = 204
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.get("/me")
async def me(user: CurrentUser) -> UserEnvelope:
    return UserEnvelope(user=UserOut.of(user))


async def _valid_setup(db: DbSession, token: str) -> SetupToken:
    if await db.scalar(select(func.count()).select_from(User)):
        raise HTTPException(status.HTTP_410_GONE, "Setup is complete; sign in instead.")
    row = await db.get(SetupToken, token_hash(token))
    if row is None or row.used_at is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This setup link is not valid.")
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires < datetime.now(UTC):
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

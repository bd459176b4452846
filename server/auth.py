"""Sign-in state: cookie-backed login sessions with idle expiry, and role dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .db import Database
from .models import LoginSession, User, UserRole
from .security import new_token, token_hash
from .settings import Settings
from .totp import enrolment_required

LOGIN_COOKIE = "rapport_login"
CLIENT_COOKIE = "rapport_client"


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_database(request).session() as db:
        yield db


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
DbSession = Annotated[AsyncSession, Depends(get_db)]


async def create_login(db: AsyncSession, user: User) -> str:
    token = new_token()
    db.add(LoginSession(token_hash=token_hash(token), user_id=user.id))
    await db.commit()
    return token


async def user_from_token(db: AsyncSession, settings: Settings, token: str | None) -> User | None:
    """Resolve a login cookie, sliding its idle expiry forward; expired logins are removed."""
    if not token:
        return None
    hashed = token_hash(token)
    login = await db.get(LoginSession, hashed)
    if login is None:
        return None
    now = datetime.now(UTC)
    if now - login.last_seen_at > timedelta(minutes=settings.login_idle_minutes):
        await db.execute(delete(LoginSession).where(LoginSession.token_hash == hashed))
        await db.commit()
        return None
    # Touch at most once a minute to keep writes rare.
    if now - login.last_seen_at > timedelta(seconds=60):
        login.last_seen_at = now
        await db.commit()
    user = await db.scalar(select(User).where(User.id == login.user_id))
    return user


async def current_user_optional(
    request: Request, db: DbSession, settings: SettingsDep
) -> User | None:
    return await user_from_token(db, settings, request.cookies.get(LOGIN_COOKIE))


# The 403 a signed-in user gets from every API but their account's while the admins require
# two-factor sign-in and they have not set it up; pages send them to /account on it.
ENROLMENT_REQUIRED = "two_factor_enrolment_required"
ENROLMENT_MESSAGE = "Set up two-factor sign-in on your account page first; it is required here."


async def signed_in_user(
    user: Annotated[User | None, Depends(current_user_optional)],
) -> User:
    """Any signed-in user, enrolled in two-factor or not: for their account and sign-out."""
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="Sign in first.")
    return user


async def current_user(user: Annotated[User, Depends(signed_in_user)], db: DbSession) -> User:
    if await enrolment_required(db, user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail={"code": ENROLMENT_REQUIRED, "message": ENROLMENT_MESSAGE},
        )
    return user


async def current_therapist(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != UserRole.THERAPIST:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Therapists only.")
    return user


async def current_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != UserRole.ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Admins only.")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
SignedInUser = Annotated[User, Depends(signed_in_user)]
OptionalUser = Annotated[User | None, Depends(current_user_optional)]
Therapist = Annotated[User, Depends(current_therapist)]
Admin = Annotated[User, Depends(current_admin)]

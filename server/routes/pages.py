"""HTML pages. Access checks happen here; the pages are Jinja2 templates in web/templates/.

The templates only compose shared chrome (base.html and the layouts that extend it) with each
page's markup: nothing about the user or the session is rendered into them, so the browser
code fetches everything it shows. No build step: templates are read (and re-read when they
change) at request time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import select

from ..auth import CLIENT_COOKIE, DbSession, OptionalUser, SettingsDep
from ..invites import InviteProblem, check_invite
from ..models import Checkin, Participant, TherapySession, User, UserRole
from ..security import new_token, safe_next, token_hash
from ..settings import Settings

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=8)
def _templates(web_dir: Path) -> Environment:
    """One template environment per web directory (settings may point tests elsewhere)."""
    return Environment(loader=FileSystemLoader(web_dir / "templates"), autoescape=True)


def _render(web_dir: Path, name: str, **context: str) -> str:
    return _templates(Path(web_dir)).get_template(name).render(**context)


def message_page(web_dir: Path, title: str, text: str, status_code: int) -> HTMLResponse:
    """A plain, friendly page for dead ends (bad links, ended sessions)."""
    body = _render(web_dir, "message.html", title=title, text=text)
    return HTMLResponse(body, status_code=status_code)


def _page(web_dir: Path, name: str) -> HTMLResponse:
    return HTMLResponse(_render(web_dir, name), headers={"Cache-Control": "no-store"})


@router.get("/")
async def home(user: OptionalUser) -> Response:
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/admin" if user.role == UserRole.ADMIN else "/sessions", 303)


@router.get("/login")
async def login_page(request: Request, settings: SettingsDep) -> Response:
    # A "next" that would leave the site is dropped here as well as in the page's script.
    raw_next = request.query_params.get("next")
    if raw_next is not None and safe_next(raw_next) is None:
        return RedirectResponse("/login", status_code=303)
    return _page(settings.web_dir, "login.html")


@router.get("/setup/{token}")
async def setup_page(settings: SettingsDep) -> Response:
    return _page(settings.web_dir, "setup.html")


def _to_login(request: Request) -> Response:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def _refuse_non_therapist(
    request: Request, user: User | None, settings: Settings
) -> Response | None:
    if user is None:
        return _to_login(request)
    if user.role != UserRole.THERAPIST:
        return message_page(
            settings.web_dir, "Therapists only", "This page is for therapists.", 403
        )
    return None


async def _own_session_page(
    page: str,
    session_id: str,
    request: Request,
    user: User | None,
    db: DbSession,
    settings: Settings,
) -> Response:
    """A therapist page about one of their own sessions; other people's ids are not found."""
    refused = _refuse_non_therapist(request, user, settings)
    if refused is not None:
        return refused
    session = await db.get(TherapySession, session_id[:64])
    if session is None or user is None or session.therapist_id != user.id:
        return message_page(
            settings.web_dir, "Session not found", "There is no such session in your list.", 404
        )
    return _page(settings.web_dir, page)


@router.get("/sessions")
async def sessions_page(request: Request, user: OptionalUser, settings: SettingsDep) -> Response:
    return _refuse_non_therapist(request, user, settings) or _page(
        settings.web_dir, "sessions.html"
    )


@router.get("/sessions/{session_id}")
async def room_page(
    session_id: str, request: Request, user: OptionalUser, db: DbSession, settings: SettingsDep
) -> Response:
    return await _own_session_page("room.html", session_id, request, user, db, settings)


@router.get("/sessions/{session_id}/summary")
async def summary_page(
    session_id: str, request: Request, user: OptionalUser, db: DbSession, settings: SettingsDep
) -> Response:
    return await _own_session_page("summary.html", session_id, request, user, db, settings)


async def _checkin_pending(db: DbSession, request: Request, session: TherapySession) -> bool:
    """A client who took part may still answer the check-in after the session ended."""
    identity = request.cookies.get(CLIENT_COOKIE)
    if not identity:
        return False
    participant = await db.scalar(
        select(Participant).where(
            Participant.session_id == session.id, Participant.identity_hash == token_hash(identity)
        )
    )
    if participant is None or not participant.admitted:
        return False
    done = await db.scalar(select(Checkin.id).where(Checkin.session_id == session.id))
    return done is None


@router.get("/join/{token}")
async def join_page(token: str, request: Request, db: DbSession, settings: SettingsDep) -> Response:
    check = await check_invite(db, token)
    if (
        check.problem == InviteProblem.ENDED
        and check.session is not None
        and await _checkin_pending(db, request, check.session)
    ):
        return _page(settings.web_dir, "join.html")
    if check.problem is not None:
        code = 404 if check.problem == InviteProblem.UNKNOWN else 410
        title = {
            InviteProblem.UNKNOWN: "Link not valid",
            InviteProblem.EXPIRED: "Link expired",
            InviteProblem.ENDED: "Session ended",
        }[check.problem]
        return message_page(settings.web_dir, title, check.message, code)
    response = _page(settings.web_dir, "join.html")
    if not request.cookies.get(CLIENT_COOKIE):
        # The browser's identity for this and later visits: lets a refresh rejoin without a
        # second admission, and tells a different device apart.
        response.set_cookie(
            CLIENT_COOKIE,
            new_token(),
            httponly=True,
            samesite="lax",
            secure=settings.cookie_secure,
            path="/",
            max_age=60 * 60 * 24 * 30,
        )
    return response


@router.get("/admin")
async def admin_page(request: Request, user: OptionalUser, settings: SettingsDep) -> Response:
    if user is None:
        return _to_login(request)
    if user.role != UserRole.ADMIN:
        return message_page(
            settings.web_dir, "Admins only", "This page is for administrators.", 403
        )
    return _page(settings.web_dir, "admin.html")


@router.get("/account")
async def account_page(request: Request, user: OptionalUser, settings: SettingsDep) -> Response:
    """Any signed-in person's own account (two-factor sign-in), therapists and admins alike."""
    if user is None:
        return _to_login(request)
    return _page(settings.web_dir, "account.html")

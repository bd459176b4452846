"""HTML pages. Access checks happen here; the pages are Jinja2 templates in web/templates/.

The templates only compose shared chrome (base.html and the layouts that extend it) with each
page's markup: nothing about the user or the session is rendered into them, so the browser
code fetches everything it shows. The one exception is the client's: their page and its dead
ends name their therapist, which the holder of the link may know. No build step: templates
are read (and re-read when they change) at request time.
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


def _render(web_dir: Path, name: str, **context: str | bool | None) -> str:
    return _templates(Path(web_dir)).get_template(name).render(**context)


def message_page(
    web_dir: Path,
    title: str,
    text: str,
    status_code: int,
    *,
    next_step: str = "",
    therapist_name: str = "",
    client: bool = False,
    action: tuple[str, str] | None = None,
) -> HTMLResponse:
    """A page for the end of a road (bad links, ended sessions, wrong role) that still says
    what to do next. A client's (``client``) is in the room's dark theme and names their
    therapist, so it reads as part of their session rather than a server error."""
    href, label = action or ("", "")
    body = _render(
        web_dir,
        "message.html",
        title=title,
        text=text,
        next_step=next_step,
        therapist_name=therapist_name,
        client=client,
        action_href=href,
        action_label=label,
    )
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def _page(web_dir: Path, name: str, **context: str) -> HTMLResponse:
    return HTMLResponse(_render(web_dir, name, **context), headers={"Cache-Control": "no-store"})


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
            settings.web_dir,
            "Therapists only",
            "This page is for therapists.",
            403,
            next_step="Your own start page has what your account can do.",
            action=("/", "Go to your start page"),
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
            settings.web_dir,
            "Session not found",
            "There is no such session in your list.",
            404,
            action=("/sessions", "Back to sessions"),
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


async def _this_browser(
    db: DbSession, request: Request, session: TherapySession
) -> Participant | None:
    """The participant row of the browser asking (its identity cookie), if it used this link."""
    identity = request.cookies.get(CLIENT_COOKIE)
    if not identity:
        return None
    participant: Participant | None = await db.scalar(
        select(Participant).where(
            Participant.session_id == session.id, Participant.identity_hash == token_hash(identity)
        )
    )
    return participant


async def _checkin_pending(
    db: DbSession, session: TherapySession, participant: Participant | None
) -> bool:
    """A client who took part may still answer the check-in after the session ended."""
    if participant is None or not participant.admitted:
        return False
    done = await db.scalar(select(Checkin.id).where(Checkin.session_id == session.id))
    return done is None


async def _therapist_name(db: DbSession, session: TherapySession | None) -> str:
    """Whom the client knows the session by; blank when the link says nothing about it."""
    if session is None:
        return ""
    therapist = await db.get(User, session.therapist_id)
    return therapist.display_name.strip() if therapist is not None else ""


def _link_problem_page(
    web_dir: Path, problem: InviteProblem, therapist: str, participant: Participant | None
) -> HTMLResponse:
    """Plain words about what happened to the link, never blaming the client, and what to do:
    nearly always, ask the therapist (by name when the link still tells us who that is)."""
    who = therapist or "your therapist"
    if problem == InviteProblem.UNKNOWN:
        return message_page(
            web_dir,
            "This link does not open a session",
            "It may have been replaced by a newer link, or only part of it was opened.",
            404,
            next_step=(
                "Open the whole link your therapist sent you again, "
                "or ask your therapist for a new one."
            ),
            client=True,
        )
    if problem == InviteProblem.EXPIRED:
        return message_page(
            web_dir,
            "This link has expired",
            "Links to a session only work for a limited time, and this one has run out.",
            410,
            next_step=f"Please ask {who} for a new link.",
            therapist_name=therapist,
            client=True,
        )
    if participant is not None and participant.admitted and not participant.denied:
        text = "Thank you for joining."
        next_step = "You can close this window now."
    else:
        # Someone who was turned away, or never got in, has nothing to be thanked for.
        text = "There is nothing more to join on this link."
        next_step = f"If you expected to meet, please contact {who} to arrange a time."
    return message_page(
        web_dir,
        "This session has ended",
        text,
        410,
        next_step=next_step,
        therapist_name=therapist,
        client=True,
    )


@router.get("/join/{token}")
async def join_page(token: str, request: Request, db: DbSession, settings: SettingsDep) -> Response:
    check = await check_invite(db, token)
    therapist = await _therapist_name(db, check.session)
    participant = None
    if check.session is not None:
        participant = await _this_browser(db, request, check.session)
    if (
        check.problem == InviteProblem.ENDED
        and check.session is not None
        and await _checkin_pending(db, check.session, participant)
    ):
        return _page(settings.web_dir, "join.html", therapist_name=therapist)
    if check.problem is not None:
        return _link_problem_page(settings.web_dir, check.problem, therapist, participant)
    response = _page(settings.web_dir, "join.html", therapist_name=therapist)
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
            settings.web_dir,
            "Admins only",
            "This page is for administrators.",
            403,
            next_step="Your own start page has what your account can do.",
            action=("/", "Go to your start page"),
        )
    return _page(settings.web_dir, "admin.html")


@router.get("/account")
async def account_page(request: Request, user: OptionalUser, settings: SettingsDep) -> Response:
    """Any signed-in person's own account (two-factor sign-in), therapists and admins alike."""
    if user is None:
        return _to_login(request)
    return _page(settings.web_dir, "account.html")

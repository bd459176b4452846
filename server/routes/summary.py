"""After the session: summary, trend across a client's sessions, exports. Therapist only."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import func, select

from media import SnapshotPayload, TimelineSecond
from signaling.messages import AgendaItemOut

from ..alliance_hub import unpack_timeline
from ..auth import DbSession, SettingsDep, Therapist
from ..checkins import checkins_in_order
from ..cluster.reads import live_signals
from ..models import Checkin, TherapySession, User
from .sessions import SessionOut, own_session, session_out

router = APIRouter(prefix="/api", tags=["summary"])
TREND_SESSIONS = 12


class AgendaOutcome(BaseModel):
    items: list[AgendaItemOut]
    homework: str
    done: int
    total: int


class CheckinOut(BaseModel):
    """The client's check-in as the therapist reads it: answers, total of 40, a calm flag."""

    skipped: bool
    bond: int | None = None
    goals: int | None = None
    tasks: int | None = None
    overall: int | None = None
    total: int | None
    # Lower than this client's own earlier check-ins (never on a first check-in).
    low: bool
    # How many earlier answered check-ins "usual" was taken from.
    compared_with: int = 0
    comment: str | None = None
    submitted_at: datetime


class TrendPoint(BaseModel):
    id: str
    date: datetime
    duration_s: float | None
    client_share: float | None
    silence_s: float | None
    long_silences: int | None
    checkin_total: int | None
    checkin_low: bool


class Summary(BaseModel):
    session: SessionOut
    metrics: SnapshotPayload | None
    timeline: list[TimelineSecond]
    agenda: AgendaOutcome
    checkin: CheckinOut | None
    trend: list[TrendPoint]


class ClientLabel(BaseModel):
    label: str
    sessions: int
    last: datetime


class ClientList(BaseModel):
    clients: list[ClientLabel]


def _agenda(session: TherapySession) -> AgendaOutcome:
    data = session.agenda or {}
    items = [AgendaItemOut.model_validate(i) for i in data.get("items", [])]
    return AgendaOutcome(
        items=items,
        homework=data.get("homework", ""),
        done=sum(1 for i in items if i.done),
        total=len(items),
    )


async def _checkins(db: DbSession, ids: list[str]) -> dict[str, Checkin]:
    if not ids:
        return {}
    rows = await db.scalars(select(Checkin).where(Checkin.session_id.in_(ids)))
    return {c.session_id: c for c in rows}


def _trend_point(session: TherapySession, scored: dict[str, Any] | None) -> TrendPoint:
    metrics = session.metrics or {}
    return TrendPoint(
        id=session.id,
        date=session.started_at or session.created_at,
        duration_s=metrics.get("duration_s"),
        client_share=metrics.get("client_share"),
        silence_s=metrics.get("silence_s"),
        long_silences=metrics.get("long_silences"),
        checkin_total=scored["total"] if scored else None,
        checkin_low=bool(scored and scored["low"]),
    )


async def _client_sessions(
    db: DbSession, user: User, label: str, limit: int | None
) -> list[TherapySession]:
    query = (
        select(TherapySession)
        .where(TherapySession.therapist_id == user.id, TherapySession.client_label == label)
        .order_by(TherapySession.created_at.desc())
    )
    if limit:
        query = query.limit(limit)
    rows = list(await db.scalars(query))
    rows.reverse()
    return rows


async def build_summary(
    db: DbSession, user: User, session: TherapySession, settings: Any, app: Any
) -> Summary:
    # Live from the node hosting the room (in cluster mode, wherever this request landed).
    live_metrics, live_timeline = await live_signals(app, session.id)
    metrics = live_metrics or session.metrics
    timeline = live_timeline or unpack_timeline(session.timeline or [])
    # All of this client's sessions: each check-in is compared with the ones before it.
    every = (
        [session]
        if not session.client_label
        else await _client_sessions(db, user, session.client_label, None)
    )
    if session not in every:
        every = [session]
    checkins = await _checkins(db, [s.id for s in every])
    scored = checkins_in_order([s.id for s in every], checkins)
    history = every[-TREND_SESSIONS:]
    checkin = scored.get(session.id)
    return Summary(
        session=session_out(session, settings),
        metrics=None if metrics is None else SnapshotPayload.model_validate(metrics),
        timeline=[TimelineSecond(**second) for second in timeline],
        agenda=_agenda(session),
        checkin=None if checkin is None else CheckinOut.model_validate(checkin),
        trend=[_trend_point(s, scored.get(s.id)) for s in history],
    )


@router.get("/sessions/{session_id}/summary")
async def session_summary(
    session_id: str, request: Request, user: Therapist, db: DbSession, settings: SettingsDep
) -> Summary:
    session = await own_session(db, user, session_id)
    return await build_summary(db, user, session, settings, request.app)


@router.get("/sessions/{session_id}/export")
async def export_session(
    session_id: str, request: Request, user: Therapist, db: DbSession, settings: SettingsDep
) -> Response:
    session = await own_session(db, user, session_id)
    summary = await build_summary(db, user, session, settings, request.app)
    body = summary.model_dump_json(indent=2)
    return Response(
        body,
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="rapport-session-{session.id}.json"'
        },
    )


@router.get("/clients")
async def client_labels(user: Therapist, db: DbSession) -> ClientList:
    rows = await db.execute(
        select(TherapySession.client_label, func.count(), func.max(TherapySession.created_at))
        .where(TherapySession.therapist_id == user.id, TherapySession.client_label != "")
        .group_by(TherapySession.client_label)
        .order_by(func.max(TherapySession.created_at).desc())
    )
    return ClientList(
        clients=[ClientLabel(label=label, sessions=count, last=last) for label, count, last in rows]
    )


CSV_COLUMNS = [
    "session_id",
    "date",
    "status",
    "duration_s",
    "therapist_talk_s",
    "client_talk_s",
    "client_share",
    "silence_s",
    "long_silences",
    "overlap_s",
    "turns",
    "interruptions_therapist",
    "interruptions_client",
    "backchannels",
    "checkin_bond",
    "checkin_goals",
    "checkin_tasks",
    "checkin_overall",
    "checkin_total",
    "checkin_low",
    "checkin_skipped",
    "agenda_done",
    "agenda_total",
]


@router.get("/clients/history.csv")
async def client_history_csv(
    user: Therapist, db: DbSession, label: str = Query(min_length=1, max_length=120)
) -> Response:
    sessions = await _client_sessions(db, user, label, None)
    if not sessions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No sessions with that client label.")
    checkins = await _checkins(db, [s.id for s in sessions])
    scored = checkins_in_order([s.id for s in sessions], checkins)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for s in sessions:
        m = s.metrics or {}
        c = scored.get(s.id) or {}
        agenda = _agenda(s)
        writer.writerow(
            {
                "session_id": s.id,
                "date": (s.started_at or s.created_at).isoformat(),
                "status": str(s.status),
                "duration_s": m.get("duration_s"),
                "therapist_talk_s": m.get("therapist_talk_s"),
                "client_talk_s": m.get("client_talk_s"),
                "client_share": m.get("client_share"),
                "silence_s": m.get("silence_s"),
                "long_silences": m.get("long_silences"),
                "overlap_s": m.get("overlap_s"),
                "turns": m.get("turns"),
                "interruptions_therapist": (m.get("interruptions") or {}).get("therapist"),
                "interruptions_client": (m.get("interruptions") or {}).get("client"),
                "backchannels": m.get("backchannels"),
                "checkin_bond": c.get("bond"),
                "checkin_goals": c.get("goals"),
                "checkin_tasks": c.get("tasks"),
                "checkin_overall": c.get("overall"),
                "checkin_total": c.get("total"),
                "checkin_low": c.get("low"),
                "checkin_skipped": c.get("skipped"),
                "agenda_done": agenda.done,
                "agenda_total": agenda.total,
            }
        )
    safe = "".join(ch if ch.isalnum() else "-" for ch in label)[:40]
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="rapport-client-{safe}.csv"'},
    )

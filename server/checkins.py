"""Check-in scoring. The four items are our own wording; each is 0–10, total 0–40.

"Lower than usual" means lower than *this client's* own earlier check-ins, never against a
fixed line: people use the scale differently, and a first check-in has no usual to be lower
than. A check-in is flagged when its total is at least ``LOW_DROP_TOTAL`` below the mean of
the client's earlier answered check-ins, or any one item is at least ``LOW_DROP_ITEM`` below
that item's earlier mean (one sharp drop, e.g. in feeling heard, matters even when the rest
holds). Skipped check-ins are not part of the usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import fmean
from typing import Any

from .models import Checkin

LOW_DROP_TOTAL = 4.0
LOW_DROP_ITEM = 3.0
# The usual is the mean of at most this many earlier check-ins (recent ones describe now).
USUAL_OF_LAST = 6
ITEMS = ("bond", "goals", "tasks", "overall")
QUESTIONS = {
    "bond": "I felt heard, understood and respected.",
    "goals": "We worked on what I wanted to work on.",
    "tasks": "The way we worked today suited me.",
    "overall": "Overall, today's session was right for me.",
}


def _scores(checkin: Checkin) -> dict[str, int] | None:
    if checkin.skipped:
        return None
    scores = {k: getattr(checkin, k) for k in ITEMS}
    if any(v is None for v in scores.values()):
        return None
    return scores


def lower_than_usual(checkin: Checkin, earlier: Iterable[Checkin]) -> bool:
    """Whether ``checkin`` is clearly below this client's ``earlier`` check-ins (oldest first)."""
    now = _scores(checkin)
    before = [s for s in (_scores(c) for c in earlier) if s is not None][-USUAL_OF_LAST:]
    if now is None or not before:
        return False
    usual_total = fmean(sum(s.values()) for s in before)
    if sum(now.values()) <= usual_total - LOW_DROP_TOTAL:
        return True
    return any(now[k] <= fmean(s[k] for s in before) - LOW_DROP_ITEM for k in ITEMS)


def checkin_out(checkin: Checkin | None, earlier: Sequence[Checkin] = ()) -> dict[str, Any] | None:
    """The check-in as the therapist reads it; ``earlier`` are the same client's check-ins
    from their previous sessions, oldest first (empty: nothing to compare with)."""
    if checkin is None:
        return None
    if checkin.skipped:
        return {"skipped": True, "total": None, "low": False, "submitted_at": checkin.created_at}
    scores = {k: getattr(checkin, k) for k in ITEMS}
    total = sum(v for v in scores.values() if v is not None)
    return {
        "skipped": False,
        **scores,
        "total": total,
        "low": lower_than_usual(checkin, earlier),
        "compared_with": sum(1 for c in earlier if _scores(c) is not None),
        "comment": checkin.comment,
        "submitted_at": checkin.created_at,
    }


def checkins_in_order(
    session_ids: Sequence[str], by_session: dict[str, Checkin]
) -> dict[str, dict[str, Any] | None]:
    """Each session's check-in scored against the check-ins of the sessions before it
    (``session_ids`` is one client's sessions, oldest first)."""
    out: dict[str, dict[str, Any] | None] = {}
    earlier: list[Checkin] = []
    for sid in session_ids:
        checkin = by_session.get(sid)
        out[sid] = checkin_out(checkin, earlier)
        if checkin is not None:
            earlier.append(checkin)
    return out

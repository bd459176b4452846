"""Check-in scoring. The four items are our own wording; each is 0–10, total 0–40.

A check-in is flagged as low when the total is under ``LOW_TOTAL`` or any single item is at
or below ``LOW_ITEM``: one very low answer (e.g. not feeling heard) matters even when the
others are high.
"""

from __future__ import annotations

from typing import Any

from .models import Checkin

LOW_TOTAL = 30
LOW_ITEM = 4
ITEMS = ("bond", "goals", "tasks", "overall")
QUESTIONS = {
    "bond": "I felt heard, understood and respected.",
    "goals": "We worked on what I wanted to work on.",
    "tasks": "The way we worked today suited me.",
    "overall": "Overall, today's session was right for me.",
}


def checkin_out(checkin: Checkin | None) -> dict[str, Any] | None:
    if checkin is None:
        return None
    if checkin.skipped:
        return {"skipped": True, "total": None, "low": False, "submitted_at": checkin.created_at}
    scores = {k: getattr(checkin, k) for k in ITEMS}
    total = sum(v for v in scores.values() if v is not None)
    low = total < LOW_TOTAL or any(v is not None and v <= LOW_ITEM for v in scores.values())
    return {
        "skipped": False,
        **scores,
        "total": total,
        "low": low,
        "comment": checkin.comment,
        "submitted_at": checkin.created_at,
    }

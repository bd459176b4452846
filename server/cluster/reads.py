"""Reads of a session's live signals from whichever node an HTTP request landed on.

The signals engine of a live session runs on the node hosting its room; behind a load
balancer the therapist's REST reads (metrics, timeline, summary) land on any node. A node that
does not host the room asks the one that does (``Cluster.remote_signals``) and, if it does not
answer in time, the caller falls back to what is persisted (at most 5 s old).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..alliance_hub import SignalsHub
from .node import Cluster


async def live_signals(
    app: Any, session_id: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The session's live snapshot and timeline (JSON objects, as ``SignalsHub`` gives them),
    each None where no node has them live. Single-node mode reads this node's hub only."""
    hub: SignalsHub = app.state.signals
    cluster: Cluster | None = app.state.cluster
    if cluster is None or session_id in hub.sessions:
        return hub.latest(session_id), hub.timeline(session_id)
    answer = await cluster.remote_signals(session_id)
    if answer is None:
        return None, None
    snapshot = None if answer.snapshot is None else answer.snapshot.model_dump(mode="json")
    timeline = None if answer.timeline is None else [dataclasses.asdict(s) for s in answer.timeline]
    return snapshot, timeline

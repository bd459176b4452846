"""In-call chat: a room's messages, held in memory for the session only.

Chat is clinical content, so it is never written anywhere: no database, no log, no audit
detail. A room keeps its messages so a reload or a reconnect during the session gets them
back (``chat_history``); they go with the room when the session ends or the room unloads.

Messages are kept per *thread*: the therapist and one client participant. A waiting-room
stranger who got hold of the link sees only what they wrote and what the therapist wrote to
them, never the admitted client's conversation (and the other way round).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from media import Role

#: Messages the room keeps (all threads together); the oldest go first.
MAX_MESSAGES = 500
#: Messages a client may send before being admitted: enough for "running late", few enough
#: that a leaked link cannot fill the therapist's chat (or push the real one out of memory).
MAX_WAITING_MESSAGES = 20
MAX_CHAT_CHARS = 2000


@dataclass(frozen=True)
class ChatEntry:
    id: int
    participant_id: int  # the client participant whose thread this is
    from_role: Role
    from_name: str
    text: str
    at: datetime


class ChatLog:
    """A bounded, in-memory list of a room's chat messages."""

    def __init__(self, max_messages: int = MAX_MESSAGES) -> None:
        self._entries: deque[ChatEntry] = deque(maxlen=max_messages)
        self._next_id = 1
        self._sent_waiting: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, participant_id: int, from_role: Role, from_name: str, text: str) -> ChatEntry:
        entry = ChatEntry(
            id=self._next_id,
            participant_id=participant_id,
            from_role=from_role,
            from_name=from_name,
            text=text,
            at=datetime.now(UTC),
        )
        self._next_id += 1
        self._entries.append(entry)
        return entry

    def may_send_waiting(self, participant_id: int) -> bool:
        """Count one message sent from the waiting room; False once over the allowance."""
        sent = self._sent_waiting.get(participant_id, 0)
        if sent >= MAX_WAITING_MESSAGES:
            return False
        self._sent_waiting[participant_id] = sent + 1
        return True

    def thread(self, participant_id: int) -> list[ChatEntry]:
        return [e for e in self._entries if e.participant_id == participant_id]

    def all(self) -> list[ChatEntry]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._sent_waiting.clear()

"""Envelopes between nodes for a relayed WebSocket.

The browser's frames travel inside them unchanged: each ``Frame.text`` is exactly one wire
message of ``signaling.messages`` (validated by the hosting room as if it came from a local
socket), so the protocol has one definition whichever node a socket lands on.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from media import Role


class MemberSpec(BaseModel):
    """What the node that authenticated a socket vouches for (see ``signaling.room.Member``)."""

    role: Role
    actor: str
    participant_id: int | None = None
    previously_admitted: bool = False
    invite_hash: str = ""
    invite_expires_at: float | None = None
    identity_hash: str = ""
    address: str = ""
    login_hash: str = ""
    user_id: int | None = None
    display_name: str = ""  # the therapist's, shown beside their chat messages


class Open(BaseModel):
    """A socket landed on ``origin`` for a room hosted by the receiver."""

    kind: Literal["open"] = "open"
    conn: str
    origin: str
    session_id: str
    status: str
    member: MemberSpec


class Frame(BaseModel):
    """One text frame of a relayed socket, in either direction."""

    kind: Literal["frame"] = "frame"
    conn: str
    text: str


class Close(BaseModel):
    """The relayed socket is closed (by the browser, or by the room with ``code``)."""

    kind: Literal["close"] = "close"
    conn: str
    code: int = 1000


Envelope = Annotated[Open | Frame | Close, Field(discriminator="kind")]
envelope_adapter: TypeAdapter[Open | Frame | Close] = TypeAdapter(Envelope)

"""Messages between nodes: envelopes for a relayed WebSocket, and reads of a hosted room.

The browser's frames travel inside them unchanged: each ``Frame.text`` is exactly one wire
message of ``signaling.messages`` (validated by the hosting room as if it came from a local
socket), so the protocol has one definition whichever node a socket lands on.

Live state (signals, call quality) exists only in the memory of the node hosting the room, but
an HTTP request lands on any node behind the load balancer: that node sends an ``Ask`` to the
host and waits briefly for the ``Reply`` carrying the same ``id``. The answers are the API's own
models, so a read gives the same shape whichever node served it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, Field, TypeAdapter, create_model

from media import SnapshotPayload, TimelineSecond
from signaling.room import Channel, Member

from ..routes.admin import CallDetail, LiveCall

# ``Member`` fields that are the socket's state in the hosting room, not something the node
# that authenticated the socket vouches for: they start afresh on the host.
HOST_STATE = frozenset(
    {
        "channel",
        "state",
        "audio_muted",
        "video_muted",
        "screen_sharing",
        "waiting_since",
        "limiter",
        "stats_bucket",
        "_send_lock",
    }
)


def spec_fields(member_type: type[Any]) -> dict[str, Any]:
    """Every field of the ``member_type`` dataclass but ``HOST_STATE``, as pydantic fields.

    Derived rather than written out: a field added to ``Member`` (the socket's identity, its
    invite, ...) travels to the host with no change here. One that cannot be sent as JSON
    fails at import, which forces the choice of adding it to ``HOST_STATE``.
    """
    hints = get_type_hints(member_type)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(member_type):
        if field.name in HOST_STATE:
            continue
        if field.default is not dataclasses.MISSING:
            fields[field.name] = (hints[field.name], field.default)
        elif field.default_factory is not dataclasses.MISSING:
            fields[field.name] = (hints[field.name], Field(default_factory=field.default_factory))
        else:
            fields[field.name] = (hints[field.name], ...)
    return fields


if TYPE_CHECKING:

    class MemberSpec(BaseModel):
        """What the node that authenticated a socket vouches for (``Member`` less HOST_STATE)."""

else:
    MemberSpec = create_model(
        "MemberSpec",
        __doc__="What the node that authenticated a socket vouches for (``Member`` less "
        "HOST_STATE).",
        **spec_fields(Member),
    )


def member_spec(member: Member) -> MemberSpec:
    return MemberSpec.model_validate(
        {name: getattr(member, name) for name in MemberSpec.model_fields}
    )


def member_from(spec: MemberSpec, channel: Channel) -> Member:
    """The hosting node's ``Member`` for a relayed socket, served through ``channel``."""
    return Member(channel=channel, **spec.model_dump())


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


# What a node can be asked about the rooms it hosts: a session's live signals (snapshot and
# timeline), a call's quality detail (admins: quality, never clinical content), its live calls;
# and what it must be told because a socket in its rooms was authenticated elsewhere: a
# sign-out, a replaced invite link (the sockets they revoke are closed, wherever they landed).


class SignalsRead(BaseModel):
    query: Literal["signals"] = "signals"
    session_id: str


class CallQualityRead(BaseModel):
    query: Literal["call_quality"] = "call_quality"
    session_id: str


class LiveCallsRead(BaseModel):
    query: Literal["live_calls"] = "live_calls"


class SignOut(BaseModel):
    """A login (``login_hash``) or every login of a user (``user_id``) was signed out."""

    query: Literal["sign_out"] = "sign_out"
    login_hash: str | None = None
    user_id: int | None = None


class InviteRenewed(BaseModel):
    """The session's invite link was replaced (``signaling.room.Room.invite_renewed``)."""

    query: Literal["invite_renewed"] = "invite_renewed"
    session_id: str
    new_hash: str
    keep_admitted: bool


Question = Annotated[
    SignalsRead | CallQualityRead | LiveCallsRead | SignOut | InviteRenewed,
    Field(discriminator="query"),
]


class Ask(BaseModel):
    """A question for the receiver; answered with a ``Reply`` carrying the same ``id``."""

    kind: Literal["ask"] = "ask"
    id: str
    origin: str
    question: Question


class SignalsAnswer(BaseModel):
    """A session's live signals on its host; None where the host has none (yet)."""

    query: Literal["signals"] = "signals"
    snapshot: SnapshotPayload | None = None
    timeline: list[TimelineSecond] | None = None


class QualityAnswer(BaseModel):
    query: Literal["call_quality"] = "call_quality"
    detail: CallDetail | None = None


class CallsAnswer(BaseModel):
    query: Literal["live_calls"] = "live_calls"
    calls: list[LiveCall] = []


class ClosedAnswer(BaseModel):
    """How many sockets a sign-out or a replaced link closed on the receiver."""

    query: Literal["closed"] = "closed"
    closed: int = 0


Answer = Annotated[
    SignalsAnswer | QualityAnswer | CallsAnswer | ClosedAnswer, Field(discriminator="query")
]


class Reply(BaseModel):
    kind: Literal["reply"] = "reply"
    id: str
    answer: Answer


Envelope = Annotated[Open | Frame | Close | Ask | Reply, Field(discriminator="kind")]
envelope_adapter: TypeAdapter[Open | Frame | Close | Ask | Reply] = TypeAdapter(Envelope)

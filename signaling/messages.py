"""Every message that crosses the signalling WebSocket, as pydantic models.

Each message is a JSON object with a ``type`` field. Inbound messages (browser → server) are
parsed with a discriminated union so an unknown type is rejected with a precise error rather
than guessed at. Sizes are bounded here so a hostile peer cannot make the server hold large
strings.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    field_validator,
    model_serializer,
)

from media import MediaState, Role, SnapshotPayload

MAX_SDP_CHARS = 60_000


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Join(_Inbound):
    """Client: enter the waiting room after the device check. Therapist: enter the room.

    ``takeover`` lets a therapist move an open session to this tab.
    """

    type: Literal["join"]
    display_name: str | None = Field(default=None, max_length=80)
    takeover: bool = False


class Offer(_Inbound):
    type: Literal["offer"]
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)


class Admit(_Inbound):
    type: Literal["admit"]
    participant_id: int


class Deny(_Inbound):
    type: Literal["deny"]
    participant_id: int


class Remove(_Inbound):
    """Therapist: take a participant (admitted or waiting) out of the session for good."""

    type: Literal["remove"]
    participant_id: int


class Leave(_Inbound):
    type: Literal["leave"]


class End(_Inbound):
    type: Literal["end"]


class Mute(_Inbound):
    type: Literal["mute"]
    audio: bool
    video: bool


class Ping(_Inbound):
    type: Literal["ping"]
    t: float = 0.0


class AgendaAdd(_Inbound):
    """Therapist adds an item; a client's item is a proposal until the therapist accepts it."""

    type: Literal["agenda_add"]
    text: str = Field(min_length=1, max_length=200)


class AgendaUpdate(_Inbound):
    type: Literal["agenda_update"]
    item_id: int
    text: str | None = Field(default=None, max_length=200)
    done: bool | None = None


class AgendaAccept(_Inbound):
    type: Literal["agenda_accept"]
    item_id: int


class AgendaRemove(_Inbound):
    type: Literal["agenda_remove"]
    item_id: int


class AgendaReorder(_Inbound):
    type: Literal["agenda_reorder"]
    item_ids: list[int] = Field(max_length=100)


class Homework(_Inbound):
    type: Literal["homework"]
    text: str = Field(max_length=2000)


class ShareBalance(_Inbound):
    """Therapist shows (or stops showing) the talk-balance bar to the client."""

    type: Literal["share_balance"]
    on: bool


class ClientStats(_Inbound):
    """What the browser's own getStats() says, every 2 s; all optional, all bounded."""

    type: Literal["stats"]
    rtt_ms: float | None = Field(default=None, ge=0, le=60_000)
    candidate_type: Literal["host", "srflx", "prflx", "relay"] | None = None
    outbound_bitrate: float | None = Field(default=None, ge=0, le=1e9)
    inbound_bitrate: float | None = Field(default=None, ge=0, le=1e9)
    fps_in: float | None = Field(default=None, ge=0, le=240)
    fps_out: float | None = Field(default=None, ge=0, le=240)
    width_in: int | None = Field(default=None, ge=0, le=10_000)
    height_in: int | None = Field(default=None, ge=0, le=10_000)
    freezes: int | None = Field(default=None, ge=0, le=1_000_000)
    jitter_buffer_ms: float | None = Field(default=None, ge=0, le=60_000)
    audio_loss_in: float | None = Field(default=None, ge=0, le=1)
    video_loss_in: float | None = Field(default=None, ge=0, le=1)


# --- chat (issue 13) -------------------------------------------------------------------------
CHAT_MAX_CHARS = 2000


class ChatSend(_Inbound):
    """A chat message. From a waiting client it goes to the therapist only.

    ``participant_id`` is the therapist's choice of whom to write to (someone in the waiting
    room); without it the message goes to the admitted client (or the one person waiting).
    Clients leave it out: their messages always go to the therapist.
    """

    type: Literal["chat"]
    text: str
    participant_id: int | None = None

    @field_validator("text")
    @classmethod
    def _bounded(cls, value: str) -> str:
        # Counted after stripping, in code points (what the page's counter shows).
        text = value.replace("\r\n", "\n").strip()
        if not text:
            raise ValueError("the message is empty")
        if len(text) > CHAT_MAX_CHARS:
            raise ValueError(
                f"chat messages are limited to {CHAT_MAX_CHARS} characters; "
                f"this one has {len(text)}"
            )
        return text


# --- ICE refresh (issue 16): fresh TURN credentials for a page that rebuilds its peer
# connection without rejoining (a media restart hours into a call).
class IceRefresh(_Inbound):
    """Ask for ICE servers issued now; answered with ``ice_servers`` (in the call only)."""

    type: Literal["ice_refresh"]


# --- screen sharing (issue 13) ---
class ScreenShare(_Inbound):
    """Start or stop showing your screen to the other person; one person shares at a time."""

    type: Literal["screen_share"]
    active: bool


InboundMessage = Annotated[
    Join
    | Offer
    | Admit
    | Deny
    | Remove
    | Leave
    | End
    | Mute
    | Ping
    | AgendaAdd
    | AgendaUpdate
    | AgendaAccept
    | AgendaRemove
    | AgendaReorder
    | Homework
    | ShareBalance
    | ClientStats
    | ChatSend
    | IceRefresh
    | ScreenShare,
    Field(discriminator="type"),
]
# Derived from the union so a new message type cannot be forgotten here.
INBOUND_TYPES = frozenset(
    get_args(model.model_fields["type"].annotation)[0]
    for model in get_args(get_args(InboundMessage)[0])
)
inbound_adapter: TypeAdapter[InboundMessage] = TypeAdapter(InboundMessage)


class _Outbound(BaseModel):
    model_config = ConfigDict(frozen=True)


class IceServer(_Outbound):
    """An RTCIceServer as the browser's RTCPeerConnection takes it (absent fields omitted:
    a null ``username`` would reach the browser as the string "null")."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


# "relay" makes the browser use TURN only: a clinic whose firewall lets nothing else through,
# or a client who must not reveal their own address to the server.
IceTransportPolicy = Literal["all", "relay"]


class Welcome(_Outbound):
    """First message on every socket: who you are here.

    It carries no ICE servers: a TURN credential is a key to a relay, so only admitted
    participants get one (on ``joined`` and ``admitted``).
    """

    type: Literal["welcome"] = "welcome"
    role: Role
    session_id: str | None = None  # withheld from a client until admitted
    participant_id: int | None = None
    status: str = "scheduled"


class Waiting(_Outbound):
    type: Literal["waiting"] = "waiting"
    therapist_present: bool = False


class Admitted(_Outbound):
    """Client is in the call; the ICE servers (fresh TURN credentials) are for its next offer."""

    type: Literal["admitted"] = "admitted"
    rejoined: bool = False
    ice_servers: list[IceServer] = Field(default_factory=list)
    ice_transport_policy: IceTransportPolicy = "all"
    ice_ttl_s: int | None = None  # lifetime of the TURN credentials in ice_servers, if any


class Joined(_Outbound):
    """Therapist entered the room (or took it over from another tab); ICE as on ``admitted``."""

    type: Literal["joined"] = "joined"
    sharing_balance: bool = False  # so a reloaded page shows what the client sees
    ice_servers: list[IceServer] = Field(default_factory=list)
    ice_transport_policy: IceTransportPolicy = "all"
    ice_ttl_s: int | None = None


class Denied(_Outbound):
    type: Literal["denied"] = "denied"
    message: str = "Your therapist could not admit you to this session."


class Removed(_Outbound):
    """Client: the therapist took you out of the session; this browser cannot rejoin it."""

    type: Literal["removed"] = "removed"
    message: str = "Your therapist removed you from this session."


class Answer(_Outbound):
    type: Literal["answer"] = "answer"
    sdp: str


class WaitingEntry(BaseModel):
    participant_id: int
    display_name: str
    waiting_since: float
    returning: bool = False


class Lobby(_Outbound):
    """Therapist only: who is in the waiting room."""

    type: Literal["lobby"] = "lobby"
    waiting: list[WaitingEntry]


class PeerState(_Outbound):
    """The other participant's presence, mute and media state."""

    type: Literal["peer_state"] = "peer_state"
    role: Role
    present: bool
    audio_muted: bool = False
    video_muted: bool = False
    media: MediaState = "none"
    # Their socket dropped without `leave`; the seat is held for the grace period.
    reconnecting: bool = False
    # Therapist only, for the client: whom a `remove` names.
    participant_id: int | None = None
    # Screen sharing (issue 13): they are showing their screen on the second video section.
    screen_sharing: bool = False


class RestartMedia(_Outbound):
    """Drop your peer connection and send a fresh ``offer`` now (keep the stage).

    Sent to both participants at once when the server knows their media is gone on its side
    (a media worker died): waiting for the browser's own ICE checks costs 10 s or more.
    """

    type: Literal["restart_media"] = "restart_media"
    reason: Literal["worker_restarted", "media_lost"]


# --- ICE refresh (issue 16)
class IceServers(_Outbound):
    """The answer to ``ice_refresh``: ICE servers as on ``joined``/``admitted``, issued now."""

    type: Literal["ice_servers"] = "ice_servers"
    ice_servers: list[IceServer] = Field(default_factory=list)
    ice_transport_policy: IceTransportPolicy = "all"
    ice_ttl_s: int | None = None


class Left(_Outbound):
    type: Literal["left"] = "left"


class Ended(_Outbound):
    type: Literal["ended"] = "ended"
    checkin: bool = False  # client: the short check-in is open now


class Replaced(_Outbound):
    """This socket was superseded by another tab or device."""

    type: Literal["replaced"] = "replaced"
    message: str


class Signals(_Outbound):
    """Therapist only: the live alliance-signal snapshot (see media/alliance/engine.py)."""

    type: Literal["signals"] = "signals"
    snapshot: SnapshotPayload


class Speaking(_Outbound):
    """Therapist only: who is talking now, sent the moment it changes."""

    type: Literal["speaking"] = "speaking"
    speaking: list[Role]


class AgendaItemOut(BaseModel):
    id: int
    text: str
    done: bool
    proposed_by: Role
    accepted: bool


class AgendaState(_Outbound):
    """The whole agenda, to both participants (the client only once admitted)."""

    type: Literal["agenda"] = "agenda"
    items: list[AgendaItemOut]
    homework: str


class SharedBalance(_Outbound):
    """Client only, while the therapist shares it: the talk balance and nothing else."""

    type: Literal["shared_balance"] = "shared_balance"
    on: bool
    client_share: float | None = None
    client_share_5min: float | None = None


class QualityLevel(BaseModel):
    score: float
    # "no_media": in the call, but media never connected (never shown as "excellent").
    label: Literal["excellent", "good", "poor", "lost", "no_media", "unknown"]


class Quality(_Outbound):
    """Connection quality of this participant (``you``) and the other one (``peer``)."""

    type: Literal["quality"] = "quality"
    you: QualityLevel
    peer: QualityLevel | None = None


class Pong(_Outbound):
    type: Literal["pong"] = "pong"
    t: float = 0.0


# --- chat (issue 13) -------------------------------------------------------------------------
class ChatMessage(_Outbound):
    """One chat message, to both ends of its thread (the sender gets it back as the receipt).

    ``from_name``: the therapist's name, or the name the client chose (else "Client"); never
    the therapist's private label for the client. ``participant_id`` names the thread and is
    sent to the therapist only (who may be writing with several people in the waiting room).
    """

    type: Literal["chat_message"] = "chat_message"
    id: int
    from_role: Role
    from_name: str
    text: str
    at: datetime
    participant_id: int | None = None


class ChatHistory(_Outbound):
    """Every message this participant may see, on each (re)join and admission."""

    type: Literal["chat_history"] = "chat_history"
    messages: list[ChatMessage]


class ErrorMessage(_Outbound):
    """A precise, human-readable error. The socket stays open unless ``fatal``."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    fatal: bool = False
    ref: str | None = None


OutboundMessage = (
    Welcome
    | Waiting
    | Admitted
    | Joined
    | Denied
    | Removed
    | Answer
    | Lobby
    | PeerState
    | Left
    | Ended
    | Replaced
    | Pong
    | ErrorMessage
    | Signals
    | Speaking
    | AgendaState
    | SharedBalance
    | Quality
    | RestartMedia
    | ChatMessage
    | ChatHistory
    | IceServers
)


class ErrorCode(StrEnum):
    """Every ``code`` an ``error`` message can carry; the browser switches on some of them.

    Each member's value is its wire string and ``meaning`` says when it is sent, so the list
    doubles as the protocol's error reference. ``ErrorMessage.code`` only accepts members, so
    a code that is not listed here cannot reach a socket.
    """

    meaning: str

    def __new__(cls, value: str, meaning: str) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    # the message itself
    BAD_JSON = "bad_json", "The frame was not a JSON object."
    TOO_LARGE = "too_large", "The frame exceeded the size limit; the socket is closed."
    UNKNOWN_TYPE = "unknown_type", "The message's 'type' is not one the server accepts."
    INVALID = "invalid_message", "The message failed validation, or is not valid right now."
    RATE_LIMITED = "rate_limited", "Too many messages (or stats) in a short time; some dropped."
    # who may do what
    FORBIDDEN = "forbidden", "Not allowed for this role, or a cross-site socket was refused."
    UNAUTHORIZED = "unauthorized", "The therapist's sign-in is missing or expired."
    NOT_ADMITTED = "not_admitted", "The client must be admitted before doing this."
    NOT_JOINED = "not_joined", "Send 'join' before anything that needs the room."
    ALREADY_CONNECTED = "already_connected", "The therapist is open in another tab or device."
    UNKNOWN_PARTICIPANT = "unknown_participant", "The person to admit or deny is not waiting."
    # the session and the invite
    NOT_FOUND = "not_found", "No such session for this therapist."
    SESSION_ENDED = "session_ended", "The session has ended; nobody can join it any more."
    COOKIES_REQUIRED = "cookies_required", "The client's browser sent no identity cookie."
    UNKNOWN_INVITE = "unknown", "The invite link does not match any session."
    INVITE_ENDED = "ended", "The invite's session has ended (seen before the socket opened)."
    EXPIRED = "expired", "The invite link has expired and this client was never admitted."
    INVITE_REVOKED = (
        "invite_revoked",
        "The therapist replaced the invite link this socket came in on; the socket is closed.",
    )
    DENIED = "denied", "The therapist denied or removed this browser; it cannot knock again."
    LOBBY_FULL = "lobby_full", "The waiting room is full (per session or per address); closed."
    # media and the server
    BAD_SDP = "bad_sdp", "The offer's SDP was rejected (malformed or unsupported)."
    MEDIA_FAILED = "media_failed", "The media server could not set up this participant's peer."
    INTERNAL = "internal", "An unexpected server error while handling the message."
    # screen sharing (issue 13)
    SCREEN_BUSY = "screen_busy", "The other person is sharing their screen; one share at a time."
    DRAINING = "draining", "The server is shutting down: new joins are refused, retry later."

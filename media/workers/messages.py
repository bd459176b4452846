"""Every message the server and a media worker exchange, one frozen dataclass per kind.

The protocol used to be positional tuples (``("connect", 7, call_id, role, sdp, True)``),
dispatched on ``message[0]`` and ``getattr(self, "op_" + name)``: a field added on one side
and not the other failed far away as an ``IndexError``, and a message of an unknown kind was
silently ignored. Here each kind is a class, both ends dispatch on the class (a ``match``),
``media.workers.wire`` refuses to send or accept anything that is not one of ``MESSAGES``,
and mypy checks every field at both ends.

Three directions of traffic:

- requests (server -> worker) subclass ``Request[P]`` and carry a ``request_id``; ``P`` is the
  payload class the worker answers with, so ``_Worker.request(Connect(...))`` is typed as
  returning an ``Answer``;
- replies (worker -> server) echo that id: ``Ok`` with one of the payload classes, or
  ``Failed`` with an ``ErrorKind`` saying which exception the caller should see;
- events (worker -> server) arrive unasked: ``Ready``, ``MediaStateChanged``, ``AudioBatch``,
  ``LogEntry``.

``Init`` is the one message before any request: the worker cannot configure itself (media
addresses, log level) before it knows the server's settings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from media.participants import MediaState
from media.relay.call import PeerReport, RelayMode
from media.relay.ice import MediaConfig

# --------------------------------------------------------------------------- handshake


@dataclass(frozen=True, slots=True)
class Init:
    """The server's settings, sent once before any request."""

    config: MediaConfig
    log_level: str


# --------------------------------------------------------------------------- reply payloads


@dataclass(frozen=True, slots=True)
class Answer:
    """A connect's SDP answer and the call's shape after it, so the server's copy stays true."""

    sdp: str
    relay_mode: dict[str, RelayMode]
    peer_count: int


@dataclass(frozen=True, slots=True)
class Left:
    """The call's shape after a disconnect; ``found`` is false when the worker had no such call
    (it was re-pinned after a crash), and then the server keeps its own relay modes."""

    found: bool
    relay_mode: dict[str, RelayMode]
    peer_count: int


@dataclass(frozen=True, slots=True)
class Closed:
    """A close finished: the call's peers are gone from the worker."""


@dataclass(frozen=True, slots=True)
class PeerReports:
    """aiortc's own stats objects, so the quality hub reads them as for an in-process call."""

    reports: tuple[PeerReport, ...]


@dataclass(frozen=True, slots=True)
class RelayStats:
    """``Call.relay_stats()`` as the worker's call returned it (a free-form admin view)."""

    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pong:
    """The watchdog's answer: the event loop of process ``pid`` is still turning."""

    pid: int


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """One worker's line in the admin health view; the field names are that view's keys."""

    pid: int
    calls: int
    peers: int
    cpu_seconds: float
    cpu_fraction: float
    loop_lag_p99_ms: float | None
    audio_dropped: int
    #: asyncio tasks alive in the worker: a leak soak needs them as much as fds and memory.
    tasks: int = 0


Payload = Answer | Left | Closed | PeerReports | RelayStats | Pong | WorkerHealth
P = TypeVar("P", Answer, Left, Closed, PeerReports, RelayStats, Pong, WorkerHealth)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request(Generic[P]):
    """A request; ``reply`` is the payload class a successful answer must carry.

    ``request_id`` is keyword-only and 0 until ``_Worker.request`` stamps the next id on it
    (``dataclasses.replace``), so call sites build a request without knowing the counter.
    """

    reply: ClassVar[type[Any]]
    request_id: int = field(default=0, kw_only=True)


@dataclass(frozen=True, slots=True)
class Connect(Request[Answer]):
    """A participant's offer; ``want_audio`` makes the worker create the call with an audio tap."""

    reply: ClassVar[type[Any]] = Answer
    call_id: str
    role: str
    sdp: str
    want_audio: bool


@dataclass(frozen=True, slots=True)
class Disconnect(Request[Left]):
    reply: ClassVar[type[Any]] = Left
    call_id: str
    role: str


@dataclass(frozen=True, slots=True)
class Close(Request[Closed]):
    reply: ClassVar[type[Any]] = Closed
    call_id: str


@dataclass(frozen=True, slots=True)
class GetReports(Request[PeerReports]):
    reply: ClassVar[type[Any]] = PeerReports
    call_id: str


@dataclass(frozen=True, slots=True)
class GetStats(Request[RelayStats]):
    reply: ClassVar[type[Any]] = RelayStats
    call_id: str


@dataclass(frozen=True, slots=True)
class Ping(Request[Pong]):
    """The watchdog's probe; a cheap request so a slow ``health`` cannot make a worker look hung."""

    reply: ClassVar[type[Any]] = Pong


@dataclass(frozen=True, slots=True)
class GetHealth(Request[WorkerHealth]):
    """``reset_lag`` starts a new loop-lag window (the bench measures one phase at a time)."""

    reply: ClassVar[type[Any]] = WorkerHealth
    reset_lag: bool = False


REQUESTS: tuple[type[Request[Any]], ...] = (
    Connect,
    Disconnect,
    Close,
    GetReports,
    GetStats,
    Ping,
    GetHealth,
)


# --------------------------------------------------------------------------- replies


class ErrorKind(enum.Enum):
    """Which exception the server raises for a failed request, so the room can tell a bad
    offer (tell the participant) from a worker that cannot serve (retry) from a bug."""

    SDP = "sdp"  # the offer cannot be used: SdpError, shown to the sender
    MEDIA_UNAVAILABLE = "media_unavailable"  # the worker cannot serve it: MediaUnavailable
    BAD_REQUEST = "bad_request"  # not a request this worker understands: a protocol bug
    INTERNAL = "internal"  # anything else; the worker logged the traceback


@dataclass(frozen=True, slots=True)
class Ok:
    request_id: int
    payload: Payload


@dataclass(frozen=True, slots=True)
class Failed:
    """``detail`` is safe to show for ``SDP``; for ``INTERNAL`` it is only the exception type."""

    request_id: int
    kind: ErrorKind
    detail: str


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is configured and serving; ``pid`` is what the admin view and the tests show."""

    pid: int


@dataclass(frozen=True, slots=True)
class MediaStateChanged:
    call_id: str
    role: str
    state: MediaState


# (call_id, role, 48 kHz mono int16 PCM). A tuple, not a dataclass: pickling a slotted
# dataclass per 20 ms frame measured about four times the cost of a tuple.
PcmChunk = tuple[str, str, bytes]


@dataclass(frozen=True, slots=True)
class AudioBatch:
    """Every frame decoded in one event-loop iteration: one pickle and one write, not one each."""

    chunks: tuple[PcmChunk, ...]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A worker's log record, re-emitted by the server so its log stays one stream."""

    name: str
    levelno: int
    levelname: str
    msg: str
    created: float
    exc_text: str | None


# ``Request[Any]`` rather than the request classes, so a generic ``Request[P]`` can be sent;
# ``MESSAGES`` still lists each class, and the wire refuses a request class missing from it.
ToWorker = Init | Request[Any]
FromWorker = Ok | Failed | Ready | MediaStateChanged | AudioBatch | LogEntry
Message = ToWorker | FromWorker

MESSAGES: tuple[type, ...] = (
    Init,
    *REQUESTS,
    Ok,
    Failed,
    Ready,
    MediaStateChanged,
    AudioBatch,
    LogEntry,
)

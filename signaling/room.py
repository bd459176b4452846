"""One session's live room: who is connected, the waiting room, and the call.

All socket traffic for a session goes through its ``Room``. The room never trusts a message
because of what it claims: role comes from how the socket was authenticated, and every
message is checked against the sender's role and state. A bad message earns the sender an
error and changes nothing else, so the other participant's call continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from media import (
    ROLES,
    AudioInput,
    Call,
    CallFactory,
    CallHandle,
    MediaConfig,
    MediaState,
    MediaUnavailable,
    Role,
    SdpError,
    other_role,
)

from . import messages as m
from .agenda import Agenda, AgendaError
from .chat import MAX_WAITING_MESSAGES, ChatEntry, ChatLog
from .ice import IceProvider, no_ice
from .limits import ConnectLimiter, Limits, SocketLimiter, TokenBucket, Verdict

log = logging.getLogger("rapport.signaling")
# A participant in the call whose media has not connected this long is "no_media": shown as
# such to the other person, in their own quality indicator, to admins and in /metrics. Nine
# seconds, so that with the pages' and the admin page's refresh it shows within 10 s of
# admission (issue 14's bar; at 10 s it showed at 10.6 s).
NO_MEDIA_AFTER_S = 9.0
# Media lost this long (and not back) is written to the audit log as `media_lost`, once per
# outage: a short blip is an incident for the admin's quality view, a long one a fact of
# the session's record.
MEDIA_LOST_AUDIT_AFTER_S = 30.0


class Channel(Protocol):
    """The transport of one participant (a Starlette WebSocket satisfies it)."""

    async def send_text(self, data: str) -> None: ...

    async def receive_text(self) -> str: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class RoomHooks(Protocol):
    """What the room asks of the application around it (storage, audit)."""

    async def audit(self, session_id: str, action: str, actor: str, detail: str = "") -> None: ...

    async def participant_decided(self, participant_id: int, admitted: bool) -> None: ...

    async def session_live(self, session_id: str) -> None: ...

    async def session_ended(self, session_id: str) -> None: ...

    async def load_agenda(self, session_id: str) -> dict[str, Any] | None: ...

    async def save_agenda(self, session_id: str, agenda: dict[str, Any]) -> None: ...


class SignalsPort(Protocol):
    """The live alliance signals of a session, as the room feeds them."""

    def on_audio(self, role: str, frame: AudioInput) -> None: ...

    def set_present(self, role: str, present: bool) -> None: ...

    def set_muted(self, role: str, muted: bool) -> None: ...


class RoomObserver(Protocol):
    """Operational counters and quality reports; never clinical content."""

    def on_message(self, kind: str) -> None: ...

    def on_error(self, code: str) -> None: ...

    def on_client_stats(self, session_id: str, role: str, stats: m.ClientStats) -> None: ...

    def on_media_restarted(self, session_id: str, reason: str, detail: str) -> None: ...


@dataclass(frozen=True)
class LobbyLimits:
    """Bounds on the waiting room, so one leaked link (or one script) cannot fill it.

    ``per_session`` and ``per_address`` cap who is waiting at once; a knock (a ``join`` that
    enters the waiting room) costs a token from the knocker's identity bucket and from their
    address's, so leaving and knocking again in a loop is refused too.
    """

    per_session: int = 5
    per_address: int = 3
    knock_burst_identity: int = 5
    knock_per_second_identity: float = 1 / 12
    knock_burst_address: int = 30
    knock_per_second_address: float = 1 / 2


def knock_limiter(burst: int, per_second: float) -> ConnectLimiter:
    return ConnectLimiter(capacity=burst, per_second=per_second)


class ChannelClosed(Exception):
    """The participant's transport went away."""


@dataclass(eq=False)
class Member:
    role: Role
    channel: Channel
    actor: str  # audit identity: "user:3" or "client:7"; never a name
    participant_id: int | None = None
    previously_admitted: bool = False
    # What the socket came in with, so revocation reaches it: the invite link's hash and
    # expiry (a client), the browser's identity hash and address (knock limits and lobby
    # caps), the login's hash and user (a therapist; sign-out closes the socket).
    invite_hash: str = ""
    invite_expires_at: float | None = None
    identity_hash: str = ""
    address: str = ""
    login_hash: str = ""
    user_id: int | None = None
    display_name: str = ""
    state: Literal["connected", "waiting", "in_call", "left", "gone"] = "connected"
    audio_muted: bool = False
    video_muted: bool = False
    screen_sharing: bool = False  # this socket's share; a rejoin starts unshared
    waiting_since: float = 0.0
    limiter: SocketLimiter = field(default_factory=lambda: SocketLimiter(Limits()))
    stats_bucket: TokenBucket = field(default_factory=lambda: TokenBucket(1.0, 3.0))
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: BaseModel) -> None:
        if self.state == "gone":
            return
        async with self._send_lock:
            try:
                await self.channel.send_text(message.model_dump_json())
            except Exception:
                self.state = "gone"


class Room:
    def __init__(
        self,
        session_id: str,
        hooks: RoomHooks,
        media_config: MediaConfig,
        limits: Limits | None = None,
        *,
        status: str = "scheduled",
        signals: SignalsPort | None = None,
        observer: RoomObserver | None = None,
        call_factory: CallFactory | None = None,
        ice: IceProvider = no_ice,
        lobby: LobbyLimits | None = None,
        knocks_by_identity: ConnectLimiter | None = None,
        knocks_by_address: ConnectLimiter | None = None,
    ) -> None:
        self.session_id = session_id
        self.lobby = lobby or LobbyLimits()
        self.knocks_by_identity = knocks_by_identity or knock_limiter(
            self.lobby.knock_burst_identity, self.lobby.knock_per_second_identity
        )
        self.knocks_by_address = knocks_by_address or knock_limiter(
            self.lobby.knock_burst_address, self.lobby.knock_per_second_address
        )
        # Participants the therapist denied or removed: their sockets are refused at once.
        self.denied: set[int] = set()
        self._expiry: dict[Member, asyncio.Task[None]] = {}
        self.ice = ice
        self.hooks = hooks
        self.limits = limits or Limits()
        self.media_config = media_config
        self.status = status
        self.members: set[Member] = set()
        self.therapist: Member | None = None
        self.client: Member | None = None
        self.waiting: dict[int, Member] = {}
        self.signals = signals
        self.observer = observer
        self.created_at = time.time()
        on_audio = signals.on_audio if signals else None
        self.call: CallHandle = (
            call_factory(session_id, on_audio, self._media_changed)
            if call_factory is not None
            else Call(media_config, on_audio=on_audio, on_media_state=self._media_changed)
        )
        self.call.on_worker_lost = self._worker_lost
        self.no_media_after_s = NO_MEDIA_AFTER_S
        # Per role: the member we are waiting on for media, and since when (monotonic).
        self._awaiting_media: dict[Role, tuple[Member, float]] = {}
        self.media_lost_audit_after_s = MEDIA_LOST_AUDIT_AFTER_S
        # Per role: the pending `media_lost` audit of the current outage (cancelled on recovery).
        self._media_lost_timers: dict[Role, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Seats held for an in-call member whose socket dropped without `leave`; each task
        # releases its seat when the grace period runs out.
        self._held: dict[Role, asyncio.Task[None]] = {}
        self.agenda: Agenda | None = None
        self.sharing_balance = False
        # Chat lives here only, for the session (see signaling/chat.py).
        self.chat = ChatLog()
        self.on_empty: Callable[[Room], None] | None = None

    @property
    def _log_ids(self) -> dict[str, str]:
        """On the room's own log lines, which may run outside any participant's socket (a
        media worker dying, an HTTP request ending the session)."""
        return {"session_id": self.session_id}

    @property
    def ended(self) -> bool:
        return self.status == "ended"

    # ----------------------------------------------------------------- socket lifecycle
    async def serve(self, member: Member) -> None:
        """Run one participant's socket until it closes."""
        member.limiter = SocketLimiter(self.limits)
        self.members.add(member)
        self._watch_expiry(member)
        try:
            await member.send(
                m.Welcome(
                    role=member.role,
                    session_id=self.session_id if member.role == Role.THERAPIST else None,
                    participant_id=member.participant_id,
                    status=self.status,
                )
            )
            while member.state != "gone":
                try:
                    raw = await member.channel.receive_text()
                except Exception:
                    break
                await self._receive(member, raw)
        finally:
            expiry = self._expiry.pop(member, None)
            if expiry is not None:
                expiry.cancel()
            await self._departed(member)

    async def _receive(self, member: Member, raw: str) -> None:
        if not await self._admit_frame(member, len(raw.encode("utf-8", errors="replace"))):
            return
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            # ValueError: JSONDecodeError, and an integer beyond Python's digit limit;
            # RecursionError: nesting deeper than the parser's stack (60,000 "[" fit a frame).
            await self._error(member, m.ErrorCode.BAD_JSON, "Messages must be JSON objects.")
            return
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            await self._error(
                member, m.ErrorCode.INVALID, "Messages must be JSON objects with a string 'type'."
            )
            return
        kind = data["type"]
        if kind not in m.INBOUND_TYPES:
            await self._error(
                member, m.ErrorCode.UNKNOWN_TYPE, f"Unknown message type {kind[:40]!r}.", ref=None
            )
            return
        try:
            message = m.inbound_adapter.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:]) or "message"
            # A validator's own words, without pydantic's "Value error, " prefix.
            problem = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
            detail = str(problem) if problem is not None else first["msg"]
            await self._error(
                member, m.ErrorCode.INVALID, f"Invalid '{kind}': {where}: {detail}.", ref=kind
            )
            return
        if self.observer is not None:
            self.observer.on_message(kind)
        try:
            await self._dispatch(member, message)
        except Exception:
            log.exception(
                "handling %s failed in session %s", kind, self.session_id, extra=self._log_ids
            )
            await self._error(
                member,
                m.ErrorCode.MEDIA_FAILED if kind == "offer" else m.ErrorCode.INTERNAL,
                "The server could not handle that message.",
                ref=kind,
            )

    async def _admit_frame(self, member: Member, size: int) -> bool:
        """Apply the socket's limits (see ``signaling.limits``); False drops the frame.

        Only the first refusal of a window is answered, so a flood is not doubled by our
        replies; an oversized frame is always answered (it is a bug, not a burst).
        """
        verdict = member.limiter.check(size)
        limits = self.limits
        if verdict is Verdict.ACCEPT:
            return True
        if verdict is Verdict.CLOSE:
            log.warning(
                "session %s: %s flooded (%d refused in %g s); closing its socket",
                self.session_id,
                member.role,
                member.limiter.strikes,
                limits.window_s,
                extra=self._log_ids,
            )
            await self._error(
                member,
                m.ErrorCode.RATE_LIMITED,
                f"Too many messages: {member.limiter.strikes} refused in the last "
                f"{limits.window_s:g} s (limits: {member.limiter.describe()}); "
                "the connection was closed.",
                fatal=True,
            )
            await self._close_channel(member, 1008)
        elif verdict is Verdict.TOO_LARGE:
            await self._error(
                member,
                m.ErrorCode.TOO_LARGE,
                f"Messages are limited to {limits.max_message_bytes} bytes.",
            )
        elif member.limiter.strikes == 1:
            await self._error(
                member,
                m.ErrorCode.RATE_LIMITED,
                "Too many messages; some were ignored."
                if verdict is Verdict.RATE
                else f"Too many messages; some were ignored ({member.limiter.describe()}).",
            )
        return False

    async def _dispatch(self, member: Member, message: m.InboundMessage) -> None:
        match message:
            case m.Ping(t=t):
                await member.send(m.Pong(t=t))
            case m.Join():
                await (
                    self._therapist_join(member, message)
                    if member.role == Role.THERAPIST
                    else self._client_join(member, message)
                )
            case m.Offer(sdp=sdp):
                await self._offer(member, sdp)
            case m.IceRefresh():
                await self._ice_refresh(member)
            case m.Admit(participant_id=pid):
                if await self._require_therapist(member, "admit participants"):
                    await self._admit_waiting(pid)
            case m.Deny(participant_id=pid):
                if await self._require_therapist(member, "deny participants"):
                    await self._deny(member, pid)
            case m.Mute(audio=audio, video=video):
                member.audio_muted, member.video_muted = audio, video
                if self.signals is not None and self.member(member.role) is member:
                    self.signals.set_muted(member.role, audio)
                await self._send_peer_state(member.role)
            case m.Remove(participant_id=pid):
                if await self._require_therapist(member, "remove participants"):
                    await self._remove(member, pid)
            case m.Leave():
                await self._leave(member, action="left")
            case m.End():
                if await self._require_therapist(member, "end the session"):
                    await self.end(member.actor)
            case m.ClientStats():
                # A bucket, not a fixed interval: reports sent every 2 s may arrive bunched
                # behind network or server delays, and that is not abuse.
                if not member.stats_bucket.take():
                    await self._error(
                        member,
                        m.ErrorCode.RATE_LIMITED,
                        "Stats are accepted about once a second.",
                        ref="stats",
                    )
                elif self._in_call(member) and self.observer is not None:
                    self.observer.on_client_stats(self.session_id, member.role, message)
            case m.AgendaAdd(text=new_text):
                if self._in_call(member):
                    await self._change_agenda(member, lambda a: a.add(new_text, member.role))
                else:
                    await self._error(
                        member,
                        m.ErrorCode.NOT_ADMITTED,
                        "You can add to the agenda once you are in the session.",
                    )
            case m.AgendaUpdate(item_id=item_id, text=edited, done=done):
                if await self._require_therapist(member, "edit the agenda"):
                    await self._change_agenda(member, lambda a: a.update(item_id, edited, done))
            case m.AgendaAccept(item_id=item_id):
                if await self._require_therapist(member, "accept agenda proposals"):
                    await self._change_agenda(member, lambda a: a.accept(item_id))
            case m.AgendaRemove(item_id=item_id):
                if await self._require_therapist(member, "remove agenda items"):
                    await self._change_agenda(member, lambda a: a.remove(item_id))
            case m.AgendaReorder(item_ids=item_ids):
                if await self._require_therapist(member, "reorder the agenda"):
                    await self._change_agenda(member, lambda a: a.reorder(item_ids))
            case m.Homework(text=homework):
                if await self._require_therapist(member, "set homework"):
                    await self._change_agenda(member, lambda a: a.set_homework(homework))
            case m.ChatSend():
                await self._chat(member, message)
            case m.ScreenShare(active=active):
                await self._screen_share(member, active)
            case m.ShareBalance(on=on):
                if await self._require_therapist(member, "share the talk balance"):
                    self.sharing_balance = on
                    if not on and self.client is not None:
                        await self.client.send(m.SharedBalance(on=False))
                    await self.hooks.audit(
                        self.session_id, f"balance_shared_{'on' if on else 'off'}", member.actor
                    )

    # ----------------------------------------------------------------- chat
    async def _chat(self, member: Member, message: m.ChatSend) -> None:
        """Keep the message for the session and send it to both ends of its thread."""
        if member.role == Role.THERAPIST:
            if not await self._require_therapist(member, "chat"):
                return
            thread = await self._chat_thread(member, message.participant_id)
            if thread is None:
                return
            name = member.display_name or "Therapist"
        else:
            thread = member.participant_id
            if message.participant_id is not None and message.participant_id != thread:
                await self._error(
                    member,
                    m.ErrorCode.FORBIDDEN,
                    "Your messages always go to your therapist; leave out 'participant_id'.",
                    ref="chat",
                )
                return
            waiting = thread is not None and self.waiting.get(thread) is member
            if thread is None or (self.client is not member and not waiting):
                await self._error(
                    member,
                    m.ErrorCode.NOT_JOINED,
                    "You can send messages once you are in the waiting room or the session.",
                    ref="chat",
                )
                return
            if waiting and not self.chat.may_send_waiting(thread):
                await self._error(
                    member,
                    m.ErrorCode.RATE_LIMITED,
                    f"You can send up to {MAX_WAITING_MESSAGES} messages from the waiting "
                    "room; your therapist has the ones you sent.",
                    ref="chat",
                )
                return
            # Never the therapist's own label for the client: only the name they chose.
            name = member.display_name or "Client"
        entry = self.chat.add(thread, member.role, name, message.text)
        if self.therapist is not None:
            await self.therapist.send(self._chat_out(entry, for_therapist=True))
        for target in list(self.members):
            if (
                target.role == Role.CLIENT
                and target.participant_id == thread
                and (target is self.client or target.state == "waiting")
            ):
                await target.send(self._chat_out(entry, for_therapist=False))

    async def _chat_thread(self, therapist: Member, requested: int | None) -> int | None:
        """Whom the therapist writes to: the person named, else the admitted client, else
        the one person waiting; anything else is an error that says what to do."""
        admitted = self.client.participant_id if self.client is not None else None
        if requested is not None:
            if requested == admitted or requested in self.waiting:
                return requested
            await self._error(
                therapist,
                m.ErrorCode.UNKNOWN_PARTICIPANT,
                "That person is no longer in the waiting room or the session.",
                ref="chat",
            )
            return None
        if admitted is not None:
            return admitted
        if len(self.waiting) == 1:
            return next(iter(self.waiting))
        await self._error(
            therapist,
            m.ErrorCode.INVALID,
            "Several people are waiting: reply to one of them from the waiting room."
            if self.waiting
            else "There is no one to send this to yet: your client is not here.",
            ref="chat",
        )
        return None

    @staticmethod
    def _chat_out(entry: ChatEntry, *, for_therapist: bool) -> m.ChatMessage:
        return m.ChatMessage(
            id=entry.id,
            from_role=entry.from_role,
            from_name=entry.from_name,
            text=entry.text,
            at=entry.at,
            participant_id=entry.participant_id if for_therapist else None,
        )

    async def _send_chat_history(self, member: Member) -> None:
        if member.role == Role.THERAPIST:
            entries = self.chat.all()
        elif member.participant_id is not None:
            entries = self.chat.thread(member.participant_id)
        else:
            entries = []
        therapist = member.role == Role.THERAPIST
        await member.send(
            m.ChatHistory(messages=[self._chat_out(e, for_therapist=therapist) for e in entries])
        )

    # ----------------------------------------------------------------- screen sharing
    async def _screen_share(self, member: Member, active: bool) -> None:
        """One person shares at a time, and a second share is refused rather than taking over.

        Refusing is race-free (two clicks at once: the first wins, the second is told why),
        and it never pulls a worksheet off the screen in the middle of someone's explanation;
        the refused person asks, and shares once the other stops. The state belongs to this
        socket: a reconnected or reloaded page starts unshared and says again if it still
        shares, so the other side never keeps a large tile for a share that is gone.
        """
        if not self._in_call(member):
            await self._error(
                member,
                m.ErrorCode.NOT_ADMITTED if member.role == Role.CLIENT else m.ErrorCode.NOT_JOINED,
                "You can share your screen once you are in the session.",
                ref="screen_share",
            )
            return
        if active == member.screen_sharing:
            return
        other = self.member(other_role(member.role))
        if active and other is not None and other.screen_sharing:
            who = "Your client" if other.role == Role.CLIENT else "Your therapist"
            await self._error(
                member,
                m.ErrorCode.SCREEN_BUSY,
                f"{who} is sharing their screen. Ask them to stop, then share yours.",
                ref="screen_share",
            )
            return
        member.screen_sharing = active
        action = "screen_share_started" if active else "screen_share_stopped"
        await self.hooks.audit(self.session_id, action, member.actor)
        await self._send_peer_state(member.role)

    # ----------------------------------------------------------------- agenda
    def _in_call(self, member: Member) -> bool:
        return member is self.therapist or member is self.client

    async def _ensure_agenda(self) -> Agenda:
        if self.agenda is None:
            self.agenda = Agenda.from_json(await self.hooks.load_agenda(self.session_id))
        return self.agenda

    def _agenda_message(self, agenda: Agenda) -> m.AgendaState:
        return m.AgendaState(
            items=[
                m.AgendaItemOut(
                    id=i.id,
                    text=i.text,
                    done=i.done,
                    proposed_by=i.proposed_by,
                    accepted=i.accepted,
                )
                for i in agenda.items
            ],
            homework=agenda.homework,
        )

    async def _change_agenda(self, member: Member, change: Callable[[Agenda], object]) -> None:
        agenda = await self._ensure_agenda()
        try:
            change(agenda)
        except AgendaError as exc:
            await self._error(member, m.ErrorCode.INVALID, str(exc))
            return
        await self.hooks.save_agenda(self.session_id, agenda.to_json())
        message = self._agenda_message(agenda)
        for target in (self.therapist, self.client):
            if target is not None:
                await target.send(message)

    async def _send_agenda(self, member: Member) -> None:
        await member.send(self._agenda_message(await self._ensure_agenda()))

    # ----------------------------------------------------------------- therapist
    async def _require_therapist(self, member: Member, what: str) -> bool:
        if member.role != Role.THERAPIST:
            await self._error(member, m.ErrorCode.FORBIDDEN, f"Only the therapist can {what}.")
            return False
        if self.therapist is not member:
            await self._error(member, m.ErrorCode.NOT_JOINED, "Join the session first.")
            return False
        return True

    async def _therapist_join(self, member: Member, message: m.Join) -> None:
        if self.ended:
            await self._error(member, m.ErrorCode.SESSION_ENDED, "This session has ended.")
            return
        current = self.therapist
        if current is member:
            await member.send(self._joined(member))
            return
        reconnected = current is not None and self._retake(current)
        if current is not None and current.state != "gone":
            if not message.takeover:
                await self._error(
                    member,
                    m.ErrorCode.ALREADY_CONNECTED,
                    "This session is already open in another tab or window.",
                )
                return
            await current.send(m.Replaced(message="This session was opened in another tab."))
            await self.call.disconnect(Role.THERAPIST)
            current.state = "left"
            await self._close_channel(current, 4001)
            await self.hooks.audit(self.session_id, "therapist_took_over", member.actor)
        self.therapist = member
        member.state = "in_call"
        await self.hooks.audit(
            self.session_id,
            "therapist_reconnected" if reconnected else "therapist_joined",
            member.actor,
        )
        await member.send(self._joined(member))
        await self._send_agenda(member)
        await self._send_chat_history(member)
        await self._send_lobby()
        await self._send_peer_state(Role.CLIENT)
        await self._send_peer_state(Role.THERAPIST)
        for waiting in self.waiting.values():
            await waiting.send(m.Waiting(therapist_present=True))

    def _joined(self, member: Member) -> m.Joined:
        grant = self.ice(self.session_id, member.actor)
        return m.Joined(
            sharing_balance=self.sharing_balance,
            ice_servers=list(grant.servers),
            ice_transport_policy=grant.transport_policy,
            ice_ttl_s=grant.ttl_s,
        )

    async def _admit_waiting(self, participant_id: int) -> None:
        assert self.therapist is not None
        member = self.waiting.get(participant_id)
        if member is None:
            await self._error(
                self.therapist, m.ErrorCode.UNKNOWN_PARTICIPANT, "That person is no longer waiting."
            )
            return
        await self._admit(member, rejoined=False)

    async def _deny(self, therapist: Member, participant_id: int) -> None:
        member = self.waiting.pop(participant_id, None)
        if member is None:
            await self._error(
                therapist, m.ErrorCode.UNKNOWN_PARTICIPANT, "That person is no longer waiting."
            )
            return
        member.state = "left"
        self.denied.add(participant_id)
        await self.hooks.participant_decided(participant_id, admitted=False)
        await self.hooks.audit(
            self.session_id, "client_denied", therapist.actor, f"participant {participant_id}"
        )
        await member.send(m.Denied())
        await self._close_channel(member, 4003)
        await self._close_denied(participant_id)
        await self._send_lobby()

    async def _close_denied(self, participant_id: int) -> None:
        """The same browser's other sockets (another tab) go too: the denial is the browser's."""
        for other in list(self.members):
            if other.participant_id == participant_id and other.state != "left":
                await self._evict(
                    other,
                    m.ErrorCode.DENIED,
                    "Your therapist could not admit you to this session.",
                    4003,
                    action="client_denied_socket_closed",
                )

    async def _remove(self, therapist: Member, participant_id: int) -> None:
        """Take a participant out for good: the call or the waiting room, every socket of
        theirs, and a held seat; the browser is marked denied so it cannot come back."""
        client = self.client
        removed = False
        if client is not None and client.participant_id == participant_id:
            removed = True
            self._retake(client)  # a seat held for their dropped socket ends here too
            self.client = None
            client.state = "left"
            await self.call.disconnect(Role.CLIENT)
            await client.send(m.Removed())
            await self._close_channel(client, 4003)
            await self._send_peer_state(Role.CLIENT)
        waiting = self.waiting.pop(participant_id, None)
        if waiting is not None:
            removed = True
            waiting.state = "left"
            await waiting.send(m.Removed())
            await self._close_channel(waiting, 4003)
        if not removed and not any(o.participant_id == participant_id for o in self.members):
            await self._error(
                therapist,
                m.ErrorCode.UNKNOWN_PARTICIPANT,
                "That person is not in this session.",
                ref="remove",
            )
            return
        self.denied.add(participant_id)
        await self.hooks.participant_decided(participant_id, admitted=False)
        await self.hooks.audit(
            self.session_id, "client_removed", therapist.actor, f"participant {participant_id}"
        )
        for other in list(self.members):
            if other.participant_id == participant_id and other.state != "left":
                other.state = "left"
                await other.send(m.Removed())
                await self._close_channel(other, 4003)
        await self._send_lobby()
        self._maybe_empty()

    # ----------------------------------------------------------------- revocation
    async def _evict(
        self, member: Member, code: m.ErrorCode, message: str, close_code: int, *, action: str
    ) -> None:
        """Take one socket out of the room (call, waiting room, or neither), tell it why with
        a fatal error, and close it."""
        lobby_changed = False
        if self.client is member:
            self.client = None
            await self.call.disconnect(Role.CLIENT)
            await self._send_peer_state(Role.CLIENT)
        if member.participant_id is not None and self.waiting.get(member.participant_id) is member:
            del self.waiting[member.participant_id]
            lobby_changed = True
        member.state = "left"
        await self._error(member, code, message, fatal=True)
        await self._close_channel(member, close_code)
        await self.hooks.audit(
            self.session_id, action, "system", f"participant {member.participant_id}"
        )
        if lobby_changed:
            await self._send_lobby()

    def _watch_expiry(self, member: Member) -> None:
        """A client who was never admitted is refused when their link expires, waiting or not."""
        if member.role != Role.CLIENT or member.previously_admitted:
            return
        if member.invite_expires_at is None:
            return
        delay = max(0.0, member.invite_expires_at - time.time())
        self._expiry[member] = asyncio.ensure_future(self._expire_after(member, delay))

    async def _expire_after(self, member: Member, delay: float) -> None:
        await asyncio.sleep(delay)
        self._expiry.pop(member, None)
        if member.previously_admitted or member.state in ("left", "gone"):
            return
        await self._evict_expired(member)

    async def _evict_expired(self, member: Member) -> None:
        await self._evict(
            member,
            m.ErrorCode.EXPIRED,
            "This link has expired. Please ask your therapist for a new one.",
            4410,
            action="client_link_expired",
        )

    def _link_expired(self, member: Member) -> bool:
        return member.invite_expires_at is not None and time.time() >= member.invite_expires_at

    async def invite_renewed(self, new_hash: str, *, keep_admitted: bool) -> int:
        """The therapist replaced the invite link: every socket that came in on an old link
        is closed, waiting or not; an admitted client stays only with ``keep_admitted``.

        Returns how many sockets were closed.
        """
        closed = 0
        for member in list(self.members):
            if member.role != Role.CLIENT or member.state in ("left", "gone"):
                continue
            if member.invite_hash == new_hash:
                continue
            if keep_admitted and member.previously_admitted:
                continue
            member.previously_admitted = False
            await self._evict(
                member,
                m.ErrorCode.INVITE_REVOKED,
                "Your therapist replaced the link to this session. "
                "Please ask them for the new one.",
                4410,
                action="client_link_revoked",
            )
            closed += 1
        held = self._held.get(Role.CLIENT)
        if held is not None and not keep_admitted and self.client is not None:
            # The seat held for a dropped client who came in on the old link is released.
            gone = self.client
            self._retake(gone)
            self.client = None
            await self.call.disconnect(Role.CLIENT)
            await self._send_peer_state(Role.CLIENT)
            closed += 1
        self._maybe_empty()
        return closed

    async def sign_out(self, *, login_hash: str | None = None, user_id: int | None = None) -> int:
        """Close the therapist's sockets of a login (or of every login of a user) that was
        signed out: the socket was authenticated once, at open, so it must be told."""
        closed = 0
        for member in list(self.members):
            if member.role != Role.THERAPIST or member.state in ("left", "gone"):
                continue
            if not (
                (login_hash is not None and member.login_hash == login_hash)
                or (user_id is not None and member.user_id == user_id)
            ):
                continue
            await self._leave(member, action="signed_out")
            await self._error(
                member,
                m.ErrorCode.UNAUTHORIZED,
                "You signed out. Sign in again to open this session.",
                fatal=True,
            )
            await self._close_channel(member, 4401)
            closed += 1
        return closed

    # ----------------------------------------------------------------- client
    async def _client_join(self, member: Member, message: m.Join) -> None:
        if self.ended:
            await self._error(
                member, m.ErrorCode.SESSION_ENDED, "This session has ended.", fatal=True
            )
            return
        if member.state in ("waiting", "in_call"):
            await self._error(member, m.ErrorCode.INVALID, "You have already joined.")
            return
        if member.participant_id in self.denied:
            await self._evict(
                member,
                m.ErrorCode.DENIED,
                "Your therapist could not admit you to this session.",
                4003,
                action="client_denied_knock_refused",
            )
            return
        member.display_name = (message.display_name or "").strip()[:80]
        if member.previously_admitted:
            await self._admit(member, rejoined=True)
            return
        assert member.participant_id is not None
        if not await self._may_knock(member):
            return
        member.state = "waiting"
        member.waiting_since = time.time()
        self.waiting[member.participant_id] = member
        await self.hooks.audit(self.session_id, "client_waiting", member.actor)
        await member.send(m.Waiting(therapist_present=self.therapist is not None))
        await self._send_chat_history(member)
        await self._send_lobby()

    async def _may_knock(self, member: Member) -> bool:
        """The waiting-room bounds (``LobbyLimits``); a refusal is fatal and says which."""
        lobby = self.lobby
        same_address = sum(1 for w in self.waiting.values() if w.address == member.address)
        if len(self.waiting) >= lobby.per_session or same_address >= lobby.per_address:
            full = (
                f"{lobby.per_session} people are already waiting"
                if len(self.waiting) >= lobby.per_session
                else f"{lobby.per_address} people from your network are already waiting"
            )
            await self._evict(
                member,
                m.ErrorCode.LOBBY_FULL,
                f"The waiting room is full ({full}). Please try again later, or contact your "
                "therapist.",
                4429,
                action="client_lobby_full",
            )
            return False
        by_identity = self.knocks_by_identity.take(f"identity:{member.identity_hash}")
        if not by_identity or not self.knocks_by_address.take(f"address:{member.address}"):
            which = "this browser" if not by_identity else "your network"
            await self._evict(
                member,
                m.ErrorCode.RATE_LIMITED,
                f"Too many attempts to enter the waiting room from {which}; "
                "wait a minute and reload the page.",
                4429,
                action="client_knock_rate_limited",
            )
            return False
        return True

    async def _admit(self, member: Member, *, rejoined: bool) -> None:
        if not rejoined and self._link_expired(member):
            await self._evict_expired(member)
            if self.therapist is not None:
                await self._error(
                    self.therapist,
                    m.ErrorCode.UNKNOWN_PARTICIPANT,
                    "That person's link expired before they were admitted.",
                    ref="admit",
                )
            return
        if member.participant_id is not None:
            self.waiting.pop(member.participant_id, None)
        previous = self.client
        reconnected = previous is not None and previous is not member and self._retake(previous)
        if previous is not None and previous is not member:
            await previous.send(
                m.Replaced(message="You joined this session from another window or device.")
            )
            previous.state = "left"
            await self.call.disconnect(Role.CLIENT)
            await self._close_channel(previous, 4001)
        self.client = member
        member.state = "in_call"
        member.previously_admitted = True
        if member.participant_id is not None and not rejoined:
            await self.hooks.participant_decided(member.participant_id, admitted=True)
        await self.hooks.audit(
            self.session_id,
            "client_reconnected"
            if reconnected
            else "client_rejoined"
            if rejoined
            else "client_admitted",
            self.therapist.actor if self.therapist and not rejoined else member.actor,
            f"participant {member.participant_id}",
        )
        if self.status == "scheduled":
            self.status = "live"
            await self.hooks.session_live(self.session_id)
        grant = self.ice(self.session_id, member.actor)
        await member.send(
            m.Admitted(
                rejoined=rejoined,
                ice_servers=list(grant.servers),
                ice_transport_policy=grant.transport_policy,
                ice_ttl_s=grant.ttl_s,
            )
        )
        await self._send_agenda(member)
        await self._send_chat_history(member)
        await self._send_lobby()
        await self._send_peer_state(Role.THERAPIST)
        await self._send_peer_state(Role.CLIENT)

    # ----------------------------------------------------------------- both
    async def _ice_refresh(self, member: Member) -> None:
        """Fresh ICE servers for a page about to re-offer: only to whom ``joined`` or
        ``admitted`` gave them, so a waiting socket still gets no TURN credentials."""
        if self.member(member.role) is not member:
            code = (
                m.ErrorCode.NOT_ADMITTED if member.role == Role.CLIENT else m.ErrorCode.NOT_JOINED
            )
            await self._error(
                member, code, "ICE servers are given once you are in the call.", ref="ice_refresh"
            )
            return
        grant = self.ice(self.session_id, member.actor)
        await member.send(
            m.IceServers(
                ice_servers=list(grant.servers),
                ice_transport_policy=grant.transport_policy,
                ice_ttl_s=grant.ttl_s,
            )
        )

    async def _offer(self, member: Member, sdp: str) -> None:
        if member.role == Role.CLIENT and self.client is not member:
            await self._error(
                member,
                m.ErrorCode.NOT_ADMITTED,
                "You can send media once your therapist admits you.",
                ref="offer",
            )
            return
        if member.role == Role.THERAPIST and self.therapist is not member:
            await self._error(
                member, m.ErrorCode.NOT_JOINED, "Join the session first.", ref="offer"
            )
            return
        try:
            answer = await self.call.connect(member.role, sdp)
        except SdpError as exc:
            await self._error(member, m.ErrorCode.BAD_SDP, str(exc), ref="offer")
            return
        except MediaUnavailable:
            await self._error(
                member,
                m.ErrorCode.MEDIA_FAILED,
                "The media server restarted; reconnecting should work.",
                ref="offer",
            )
            return
        await member.send(m.Answer(sdp=answer))

    async def _leave(self, member: Member, *, action: str) -> None:
        """Take a member out of the call or waiting room; the socket may stay open."""
        if member.role == Role.CLIENT:
            if self.client is member:
                self.client = None
                await self.call.disconnect(Role.CLIENT)
                await self.hooks.audit(self.session_id, f"client_{action}", member.actor)
                await self._send_peer_state(Role.CLIENT)
            elif (
                member.participant_id is not None
                and self.waiting.get(member.participant_id) is member
            ):
                del self.waiting[member.participant_id]
                await self.hooks.audit(self.session_id, f"client_{action}_waiting", member.actor)
                await self._send_lobby()
        elif self.therapist is member:
            self.therapist = None
            await self.call.disconnect(Role.THERAPIST)
            await self.hooks.audit(self.session_id, f"therapist_{action}", member.actor)
            await self._send_peer_state(Role.THERAPIST)
            for waiting in self.waiting.values():
                await waiting.send(m.Waiting(therapist_present=False))
        if member.state != "gone":
            member.state = "left"
            if action == "left":
                await member.send(m.Left())

    async def _departed(self, member: Member) -> None:
        if (
            member.state == "in_call"
            and self._in_call(member)
            and not self.ended
            and self.limits.reconnect_grace_s > 0
        ):
            member.state = "gone"
            self.members.discard(member)
            await self._hold(member)
            return
        if member.state in ("in_call", "waiting"):
            await self._leave(member, action="disconnected")
        member.state = "gone"
        self.members.discard(member)
        self._maybe_empty()

    def _maybe_empty(self) -> None:
        # A held seat keeps the room (and its call) alive so the member can come back to it.
        if not self.members and not self._held and self.on_empty is not None:
            self.on_empty(self)

    async def _hold(self, member: Member) -> None:
        """Keep a dropped member's seat for the grace period; the other person is told they
        are reconnecting (not that they left), and the signals count them absent meanwhile."""
        role = member.role
        task = asyncio.ensure_future(self._release_after(member, self.limits.reconnect_grace_s))
        self._held[role] = task
        log.info(
            "session %s: holding the %s's seat for reconnection",
            self.session_id,
            role,
            extra=self._log_ids,
        )
        await self._send_peer_state(role)

    async def _release_after(self, member: Member, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        role = member.role
        if self._held.get(role) is asyncio.current_task():
            del self._held[role]
        if self.member(role) is member:
            await self._leave(member, action="disconnected")
        self._maybe_empty()

    def _retake(self, previous: Member) -> bool:
        """Whether ``previous`` held its seat for a reconnect; the hold ends either way."""
        task = self._held.get(previous.role)
        if task is None or self.member(previous.role) is not previous:
            return False
        del self._held[previous.role]
        task.cancel()
        return True

    def _cancel_holds(self) -> None:
        for task in self._held.values():
            task.cancel()
        self._held.clear()

    async def end(self, actor: str) -> None:
        """The database first: if marking the session ended fails, nothing changes here and
        the caller's error says so; once it is written, everyone is told and closed, whatever
        else fails (the audit row is logged if it cannot be written)."""
        if self.ended:
            return
        try:
            await self.hooks.session_ended(self.session_id)
        except Exception:
            log.exception(
                "session %s: could not mark the session ended", self.session_id, extra=self._log_ids
            )
            if self.therapist is not None:
                await self._error(
                    self.therapist,
                    m.ErrorCode.INTERNAL,
                    "The session could not be ended (the database write failed); it is still "
                    "running. Please try again.",
                    ref="end",
                )
            return
        self.status = "ended"
        self.chat.clear()  # chat is for the session only
        self._cancel_holds()
        for task in self._expiry.values():
            task.cancel()
        self._expiry.clear()
        try:
            await self.hooks.audit(self.session_id, "session_ended", actor)
        except Exception:
            log.exception(
                "session %s: ended, but its audit row failed", self.session_id, extra=self._log_ids
            )
        for member in list(self.members):
            # Only a client who took part is asked for the check-in.
            checkin = member.role == Role.CLIENT and member.previously_admitted
            await member.send(m.Ended(checkin=checkin))
            member.state = "left"
        self.therapist = None
        self.client = None
        self.waiting.clear()
        try:
            await self.call.close()
        except Exception:
            log.exception(
                "session %s: ended, but closing its media failed",
                self.session_id,
                extra=self._log_ids,
            )
        for member in list(self.members):
            await self._close_channel(member, 1000)

    async def close(self) -> None:
        """Server shutdown: close media and sockets without ending the session.

        1012 ("service restart") tells the pages to reconnect by themselves.
        """
        self.chat.clear()  # the room unloads: its chat goes with it, never to storage
        self._cancel_holds()
        await self.call.close()
        for member in list(self.members):
            await self._close_channel(member, 1012)

    # ----------------------------------------------------------------- notifications
    async def _error(
        self,
        member: Member,
        code: m.ErrorCode,
        message: str,
        *,
        fatal: bool = False,
        ref: str | None = None,
    ) -> None:
        if self.observer is not None:
            self.observer.on_error(code)
        await member.send(m.ErrorMessage(code=code, message=message, fatal=fatal, ref=ref))

    async def _send_lobby(self) -> None:
        if self.therapist is None:
            return
        entries = [
            m.WaitingEntry(
                participant_id=pid,
                display_name=w.display_name or "Client",
                waiting_since=w.waiting_since,
                returning=w.previously_admitted,
            )
            for pid, w in self.waiting.items()
        ]
        await self.therapist.send(m.Lobby(waiting=entries))

    def peer_state(self, role: Role) -> m.PeerState:
        member = self.therapist if role == Role.THERAPIST else self.client
        return m.PeerState(
            role=role,
            present=member is not None,
            audio_muted=bool(member and member.audio_muted),
            video_muted=bool(member and member.video_muted),
            media=self.media_state(role),
            reconnecting=role in self._held,
            participant_id=member.participant_id if member and role == Role.CLIENT else None,
            screen_sharing=bool(member and member.screen_sharing),
        )

    def media_state(self, role: Role) -> MediaState:
        """The call's media state for ``role``, or "no_media" when they have been in the call
        ``no_media_after_s`` without it connecting (never "connecting" forever)."""
        member = self.member(role)
        if member is None:
            self._awaiting_media.pop(role, None)
            return "none"
        state = self.call.media_state(role)
        if state in ("connected", "lost"):
            self._awaiting_media.pop(role, None)
            return state
        waiting = self._awaiting_media.get(role)
        if waiting is None or waiting[0] is not member:
            waiting = (member, time.monotonic())
            self._awaiting_media[role] = waiting
            with contextlib.suppress(RuntimeError):  # no loop: nobody to tell anyway
                asyncio.get_running_loop().call_later(
                    self.no_media_after_s + 0.05, self._media_changed, str(role), state
                )
        return "no_media" if time.monotonic() - waiting[1] >= self.no_media_after_s else state

    def member(self, role: str) -> Member | None:
        """The therapist or the admitted client, if in the call."""
        return self.therapist if role == Role.THERAPIST else self.client

    def reconnecting(self, role: str) -> bool:
        """Whether ``role``'s seat is held for a reconnect: still ``member()``, not present."""
        return role in self._held

    def _sync_signals(self, role: Role) -> None:
        """Present for the signals = in the call with media flowing; lost media is absence."""
        if self.signals is None:
            return
        member = self.member(role)
        self.signals.set_present(
            role,
            member is not None
            and role not in self._held
            and self.call.media_state(role) == "connected",
        )
        self.signals.set_muted(role, bool(member and member.audio_muted))

    async def _send_peer_state(self, role: Role) -> None:
        """Tell the other participant about ``role``'s state."""
        self._sync_signals(role)
        target = self.client if role == Role.THERAPIST else self.therapist
        if target is not None:
            await target.send(self.peer_state(role))

    def _media_changed(self, role: str, _state: MediaState) -> None:
        if role not in ROLES:
            return
        self._watch_media_lost(Role(role))
        self._sync_signals(Role(role))
        task = asyncio.ensure_future(self._send_peer_state(Role(role)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch_media_lost(self, role: Role) -> None:
        """Arm the `media_lost` audit when ``role``'s media goes lost; disarm it otherwise."""
        lost = self.call.media_state(role) == "lost" and self.member(role) is not None
        timer = self._media_lost_timers.get(role)
        if not lost:
            if timer is not None:
                timer.cancel()
                del self._media_lost_timers[role]
            return
        if timer is not None:
            return  # this outage is already being timed
        with contextlib.suppress(RuntimeError):  # no loop: nothing to audit
            member = self.member(role)
            self._media_lost_timers[role] = asyncio.get_running_loop().call_later(
                self.media_lost_audit_after_s, self._media_lost_for_long, role, member
            )

    def _media_lost_for_long(self, role: Role, member: Member | None) -> None:
        self._media_lost_timers.pop(role, None)
        if member is None or self.member(role) is not member:
            return  # they left or were replaced: that has its own audit entry
        if self.call.media_state(role) != "lost":
            return
        # The participant's audit id and role only: no name, address or device.
        task = asyncio.ensure_future(
            self.hooks.audit(
                self.session_id,
                "media_lost",
                member.actor,
                f"{role} media lost for {self.media_lost_audit_after_s:g} s",
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_lost(self, detail: str) -> None:
        task = asyncio.ensure_future(self.restart_media("worker_restarted", detail))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def restart_media(
        self, reason: Literal["worker_restarted", "media_lost"], detail: str
    ) -> None:
        """Both participants re-offer at once: the server's side of their media is gone.

        Sent to both together (not one after the other) so neither waits on the other's
        socket; recorded as an incident and in the audit log, with no client identity.
        """
        targets = [p for p in (self.therapist, self.client) if p is not None]
        message = m.RestartMedia(reason=reason)
        await asyncio.gather(*(p.send(message) for p in targets))
        log.warning(
            "session %s: %s (%s); asked %d to re-offer",
            self.session_id,
            reason,
            detail,
            len(targets),
            extra=self._log_ids,
        )
        if self.observer is not None:
            self.observer.on_media_restarted(self.session_id, reason, detail)
        action = "media_worker_restarted" if reason == "worker_restarted" else "media_restarted"
        await self.hooks.audit(self.session_id, action, "system", detail)

    async def send_signals(self, message: m.Signals | m.Speaking) -> None:
        """Alliance signals go to the therapist's socket only, never the client's.

        The one exception is the talk-balance bar, and only while the therapist shares it.
        """
        if self.therapist is not None:
            await self.therapist.send(message)
        if self.sharing_balance and self.client is not None and isinstance(message, m.Signals):
            # The wire form, so the client sees the same rounded share as the therapist.
            snap = message.snapshot.model_dump(mode="json")
            await self.client.send(
                m.SharedBalance(
                    on=True,
                    client_share=snap["client_share"],
                    client_share_5min=snap["last_5min"]["client_share"],
                )
            )

    async def send_quality(self, role: Role, message: m.Quality) -> None:
        member = self.member(role)
        if member is not None:
            await member.send(message)

    async def _close_channel(self, member: Member, code: int) -> None:
        with contextlib.suppress(Exception):
            await member.channel.close(code)

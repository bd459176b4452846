"""One node of a Rapport cluster: its heartbeat, the rooms it hosts, and the sockets it relays.

A room lives on exactly one node. A socket that lands on another node (the load balancer
chose it) is authenticated there, then relayed over Redis pub/sub to the hosting node, where
the room serves it through a ``RelayChannel`` exactly like a local socket. Media never takes
this path: the hosting node's answer carries its own ICE candidates, so the browser's media goes
straight to the hosting node's workers.

Failure: a node that stops heartbeating disappears from Redis within ``node_ttl_s``; the nodes
relaying sockets to it close them with 1012, the pages reconnect on their own, and the next
socket places the room on a live node, which resumes the signals from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import WebSocket
from pydantic import ValidationError
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from signaling.room import Member
from signaling.rooms import RoomRegistry

from ..ops import CpuMeter
from ..routes.admin import CallDetail, LiveCall
from ..settings import usable_cores
from .directory import Directory, LiveCallSummary, NodeInfo, least_loaded, node_channel
from .wire import (
    Answer,
    Ask,
    CallQualityRead,
    CallsAnswer,
    Close,
    ClosedAnswer,
    Frame,
    InviteRenewed,
    LiveCallsRead,
    Open,
    QualityAnswer,
    Question,
    Reply,
    SignalsAnswer,
    SignalsRead,
    SignOut,
    envelope_adapter,
    member_from,
    member_spec,
)

log = logging.getLogger("rapport.cluster")

# What the hosting node does with a member whose socket is elsewhere: what ws.py does locally.
ServeHere = Callable[[str, str, Member], Awaitable[None]]
# What the hosting node answers when another node asks about its live state.
AnswerHere = Callable[[Ask], Awaitable[Answer]]
# Close code telling the page to reconnect (service restart): the room moved or its node died.
CLOSE_MOVED = 1012
_END = object()


class RelayChannel:
    """The hosting node's end of a socket relayed from ``origin`` (a ``signaling.room.Channel``)."""

    def __init__(self, cluster: Cluster, conn: str, origin: str) -> None:
        self.cluster = cluster
        self.conn = conn
        self.origin = origin
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.closed = False
        self._lock = asyncio.Lock()

    async def send_text(self, data: str) -> None:
        if self.closed:
            raise ConnectionError("relayed socket closed")
        async with self._lock:  # one publish at a time keeps the frames in order
            await self.cluster.publish(self.origin, Frame(conn=self.conn, text=data))

    async def receive_text(self) -> str:
        item = await self.inbox.get()
        if item is _END or not isinstance(item, str):
            self.closed = True
            raise WebSocketDisconnect(1001)
        return item

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.inbox.put_nowait(_END)
        async with self._lock:
            with contextlib.suppress(Exception):
                await self.cluster.publish(self.origin, Close(conn=self.conn, code=code))

    def ended(self) -> None:
        """The browser went away (or its node died)."""
        self.inbox.put_nowait(_END)


@dataclass(eq=False)
class RelayedSocket:
    """The landing node's end: a browser socket whose room is on ``host``."""

    ws: WebSocket
    conn: str
    host: str
    session_id: str
    outbox: asyncio.Queue[Frame | Close] = field(default_factory=lambda: asyncio.Queue(1000))


class Cluster:
    def __init__(
        self,
        redis_url: str,
        node_id: str,
        rooms: RoomRegistry,
        *,
        heartbeat_s: float = 1.0,
        node_ttl_s: float = 5.0,
        lease_s: float = 5.0,
        hosts_rooms: bool = True,
        draining: Callable[[], bool] = lambda: False,
        cpu: Callable[[], float] | None = None,
        ask_timeout_s: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self.rooms = rooms
        # Room for a burst of sockets opening at once (redis-py's default pool stops at 100
        # connections and then fails the command).
        pool = ConnectionPool.from_url(redis_url, decode_responses=True, max_connections=1000)
        self.redis: Redis = Redis(connection_pool=pool)
        self.directory = Directory(self.redis, node_ttl_s, lease_s)
        # The heartbeat has its own connection: a burst of placements queueing for the pool
        # must not delay it past the TTL and make this node look dead.
        self._beat_redis: Redis = Redis.from_url(redis_url, decode_responses=True)
        self._beat_directory = Directory(self._beat_redis, node_ttl_s, lease_s)
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.hosts_rooms = hosts_rooms
        self.draining = draining
        self.serve_here: ServeHere | None = None
        self.answer_here: AnswerHere | None = None
        self.ask_timeout_s = ask_timeout_s
        # Asks this node sent, by id, until their reply arrives or the timeout.
        self._asks: dict[str, asyncio.Future[Answer]] = {}
        # Set once this node gave its rooms up (drain end, shutdown): it renews no lease and
        # takes no relayed socket, so reconnecting pages are placed on a live node at once.
        self.handed_over = False
        self.started_at = time.time()
        # What this node reports as its CPU use; nodes sharing one test process pass their own
        # reading, since the process's CPU is not any one node's.
        self._cpu_read: Callable[[], float] = cpu or CpuMeter().read
        self._cores = usable_cores()
        # Sessions this node won a lease for, with when (a room follows within moments).
        self.hosted: dict[str, float] = {}
        self.inbound: dict[str, RelayChannel] = {}  # conn -> channel, rooms hosted here
        self.outbound: dict[str, RelayedSocket] = {}  # conn -> socket, rooms hosted elsewhere
        self.peers: list[NodeInfo] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._serving: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()
        self._stopped = False  # tasks stop (a crash in tests sets only this)
        self._left = False
        # A burst of sockets (every page reconnecting after a node died) places rooms a few at
        # a time rather than opening a Redis connection each.
        self._placing = asyncio.Semaphore(16)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await self.beat()
        except (RedisError, OSError) as exc:
            # Say which setting is wrong rather than a bare connection traceback; the address
            # is not printed (the URL may carry a password).
            raise RuntimeError(
                f"cluster mode: cannot reach Redis (RAPPORT_REDIS_URL): {type(exc).__name__}"
            ) from exc
        self._tasks = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._heartbeat()),
        ]
        await asyncio.wait_for(self._subscribed.wait(), timeout=10)
        log.info("node %s joined the cluster", self.node_id)

    async def stop(self) -> None:
        """Leave the cluster: close relayed sockets (their pages reconnect elsewhere)."""
        if self._left:
            return
        self._left = self._stopped = True
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=2 * self.heartbeat_s + 1)
        await self.hand_over()
        for relayed in list(self.outbound.values()):
            relayed.outbox.put_nowait(Close(conn=relayed.conn, code=CLOSE_MOVED))
        for channel in list(self.inbound.values()):
            channel.ended()
        if self._serving:
            await asyncio.gather(*self._serving, return_exceptions=True)
        with contextlib.suppress(Exception):
            for session_id in list(self.hosted):
                await self.directory.release(session_id, self.node_id)
            await self.directory.leave(self.node_id)
        await self.redis.aclose()
        await self._beat_redis.aclose()
        log.info("node %s left the cluster", self.node_id)

    async def hand_over(self) -> None:
        """Give up every room lease before the rooms' sockets are closed with 1012.

        Called when a drain ends and at shutdown. Released first, the pages' reconnection
        finds no host and places the room on a live node at once; released after, a page
        could come straight back to this node (its lease still held, the node still alive)
        or wait out the lease. The node says it is draining at the same moment, so no other
        node places a room here meanwhile.
        """
        if self.handed_over:
            return
        self.handed_over = True
        with contextlib.suppress(Exception):
            await self._beat_directory.announce(self.info())
        for session_id in set(self.hosted) | set(self.rooms.rooms):
            with contextlib.suppress(Exception):
                await self.directory.release(session_id, self.node_id)
        self.hosted.clear()
        log.info("node %s gave up its rooms", self.node_id)

    def info(self) -> NodeInfo:
        live = [room for room in self.rooms.rooms.values() if room.members]
        return NodeInfo(
            node_id=self.node_id,
            calls=len(live),
            rooms=len(self.rooms.rooms),
            relayed_sockets=len(self.outbound),
            cpu=self._cpu_read(),
            cores=self._cores,
            draining=self.draining() or self.handed_over,
            hosts_rooms=self.hosts_rooms,
            started_at=self.started_at,
            live_calls=[
                LiveCallSummary(
                    session_id=room.session_id,
                    participants=len(room.members),
                    started_at=room.created_at,
                )
                for room in live
            ],
        )

    async def beat(self) -> None:
        """Announce this node, keep its leases, and drop relays whose other end is gone."""
        directory = self._beat_directory
        await directory.announce(self.info())
        self.peers = await directory.nodes()
        alive = {node.node_id for node in self.peers}
        now = time.monotonic()
        rooms = set() if self.handed_over else set(self.rooms.rooms) | set(self.hosted)
        for session_id in rooms:
            recent = now - self.hosted.get(session_id, -1e9) < self.lease_s
            if session_id not in self.rooms.rooms and not recent:
                self.hosted.pop(session_id, None)
                await directory.release(session_id, self.node_id)
                continue
            if await directory.renew(session_id, self.node_id):
                continue
            if session_id in self.rooms.rooms and not recent:
                # Another node holds the room now (this one stalled past its lease): never
                # host a room twice; the pages reconnect to the new host.
                log.warning("lost the lease on session %s; closing its room here", session_id)
                self.hosted.pop(session_id, None)
                room = self.rooms.rooms.pop(session_id)
                await room.close()
        for relayed in list(self.outbound.values()):
            if relayed.host not in alive:
                log.warning("node %s is gone; its relayed socket reconnects", relayed.host)
                relayed.outbox.put_nowait(Close(conn=relayed.conn, code=CLOSE_MOVED))
        for channel in list(self.inbound.values()):
            if channel.origin not in alive:
                channel.ended()

    async def _heartbeat(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster heartbeat failed")

    # ------------------------------------------------------------------ placement
    async def place(self, session_id: str) -> str | None:
        """The node hosting the session's room, placing it on the least-loaded live node
        if it has none; None when no node takes new rooms (all draining)."""
        async with self._placing:
            host = await self.directory.host_of(session_id)
            if host is None or not await self.directory.alive(host):
                best = least_loaded(await self.directory.nodes(), session_id)
                if best is None:
                    return None
                host = await self.directory.place(session_id, best.node_id)
        if host == self.node_id and not self.handed_over:
            # Possibly placed here by another node: this node renews it from now on.
            self.hosted.setdefault(session_id, time.monotonic())
        return host

    async def room_closed(self, session_id: str) -> None:
        """Give the lease back when a room empties here, so the next socket re-places it."""
        if session_id in self.rooms.rooms:
            return
        self.hosted.pop(session_id, None)
        with contextlib.suppress(Exception):
            await self.directory.release(session_id, self.node_id)

    # ------------------------------------------------------------------ relaying
    async def publish(self, node_id: str, envelope: Open | Frame | Close | Ask | Reply) -> int:
        """Send to ``node_id``'s channel; returns how many subscribers got it (0: none)."""
        return int(await self.redis.publish(node_channel(node_id), envelope.model_dump_json()))

    # ------------------------------------------------------------------ reads of live state
    async def ask(self, node_id: str, question: Question) -> Answer | None:
        """``node_id``'s answer, or None if it did not answer within ``ask_timeout_s``."""
        ask = Ask(id=uuid.uuid4().hex, origin=self.node_id, question=question)
        query = question.query
        answered: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._asks[ask.id] = answered
        try:
            if not await self.publish(node_id, ask):
                return None  # nobody listens on that node's channel
            return await asyncio.wait_for(answered, self.ask_timeout_s)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("node %s did not answer a %s: %s", node_id, query, type(exc).__name__)
            return None
        finally:
            self._asks.pop(ask.id, None)

    async def remote_host(self, session_id: str) -> str | None:
        """The live node hosting the session's room, if that is not this node; None when no
        node does (or Redis cannot say)."""
        try:
            host = await self.directory.host_of(session_id)
            if host is None or host == self.node_id or not await self.directory.alive(host):
                return None  # asking a dead host would only wait out the timeout
        except (RedisError, OSError):
            return None
        return host

    async def remote_signals(self, session_id: str) -> SignalsAnswer | None:
        """The session's live signals from the node hosting its room elsewhere; None when no
        other node hosts it or the host did not answer (the caller uses what is persisted)."""
        host = await self.remote_host(session_id)
        answer = None if host is None else await self.ask(host, SignalsRead(session_id=session_id))
        return answer if isinstance(answer, SignalsAnswer) else None

    async def remote_call_quality(self, session_id: str) -> CallDetail | None:
        host = await self.remote_host(session_id)
        read = CallQualityRead(session_id=session_id)
        answer = None if host is None else await self.ask(host, read)
        return answer.detail if isinstance(answer, QualityAnswer) else None

    async def remote_calls(self) -> list[LiveCall]:
        """Every other room-hosting node's live calls, asked of all of them at once. A node
        that does not answer in time is left out (the cluster view still counts its calls)."""
        others = await self._others()
        answers = await asyncio.gather(*(self.ask(node, LiveCallsRead()) for node in others))
        return [
            call for answer in answers if isinstance(answer, CallsAnswer) for call in answer.calls
        ]

    async def _others(self) -> list[str]:
        """The other live nodes that host rooms, read now: the heartbeat's list can be a period
        old and miss a node that has just come back."""
        try:
            nodes = await self.directory.nodes()
        except (RedisError, OSError):
            nodes = self.peers
        return [n.node_id for n in nodes if n.node_id != self.node_id and n.hosts_rooms]

    async def remote_sign_out(
        self, login_hash: str | None = None, user_id: int | None = None
    ) -> int:
        """Tell every other node of a sign-out: a therapist's socket may be served in a room
        anywhere. Returns how many sockets they closed (those that answered in time)."""
        order = SignOut(login_hash=login_hash, user_id=user_id)
        others = await self._others()
        answers = await asyncio.gather(*(self.ask(node, order) for node in others))
        return sum(answer.closed for answer in answers if isinstance(answer, ClosedAnswer))

    async def remote_invite_renewed(self, session_id: str, new_hash: str, keep: bool) -> int:
        """Tell the node hosting the session's room that its invite link was replaced."""
        host = await self.remote_host(session_id)
        order = InviteRenewed(session_id=session_id, new_hash=new_hash, keep_admitted=keep)
        answer = None if host is None else await self.ask(host, order)
        return answer.closed if isinstance(answer, ClosedAnswer) else 0

    async def _answer(self, ask: Ask) -> None:
        if self.answer_here is None:
            return
        try:
            # The asker waits no longer than this either: a stuck read must not pile up here.
            answer = await asyncio.wait_for(self.answer_here(ask), self.ask_timeout_s)
            await self.publish(ask.origin, Reply(id=ask.id, answer=answer))
        except TimeoutError:
            log.warning("answering a %s took too long; dropped", ask.question.query)
        except Exception:
            log.exception("answering a %s failed", ask.question.query)

    async def relay(
        self, ws: WebSocket, host: str, session_id: str, status: str, member: Member
    ) -> None:
        """Carry an accepted browser socket to and from the room on ``host`` until either
        end closes it."""
        conn = uuid.uuid4().hex
        relayed = RelayedSocket(ws=ws, conn=conn, host=host, session_id=session_id)
        self.outbound[conn] = relayed
        spec = member_spec(member)
        upstream: asyncio.Task[None] | None = None
        try:
            await self.publish(
                host,
                Open(
                    conn=conn,
                    origin=self.node_id,
                    session_id=session_id,
                    status=status,
                    member=spec,
                ),
            )
            upstream = asyncio.ensure_future(self._upstream(relayed))
            code = await self._downstream(relayed, upstream)
            with contextlib.suppress(Exception):
                await ws.close(code)
        finally:
            self.outbound.pop(conn, None)
            if upstream is not None:
                upstream.cancel()
                with contextlib.suppress(BaseException):
                    await upstream
            with contextlib.suppress(Exception):
                await self.publish(host, Close(conn=conn))

    async def _upstream(self, relayed: RelayedSocket) -> None:
        """Browser -> hosting node, in order."""
        try:
            while True:
                text = await relayed.ws.receive_text()
                await self.publish(relayed.host, Frame(conn=relayed.conn, text=text))
        except Exception:
            pass
        relayed.outbox.put_nowait(Close(conn=relayed.conn, code=1000))

    async def _downstream(self, relayed: RelayedSocket, upstream: asyncio.Task[None]) -> int:
        """Hosting node -> browser, until a Close; returns the close code."""
        while True:
            envelope = await relayed.outbox.get()
            if isinstance(envelope, Close):
                return envelope.code
            try:
                await relayed.ws.send_text(envelope.text)
            except Exception:
                return 1000

    async def _listen(self) -> None:
        """This node's channel: relayed sockets' frames in both directions."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(node_channel(self.node_id))
                self._subscribed.set()
                # Polled with a timeout rather than cancelled: redis-py's pub/sub reader does
                # not always let a cancellation through, which hung shutdown.
                while not self._stopped:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        await self._received(message["data"])
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster channel failed; resubscribing")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _received(self, data: str) -> None:
        try:
            envelope = envelope_adapter.validate_json(data)
        except ValidationError:
            log.warning("dropped a malformed cluster envelope")
            return
        if isinstance(envelope, Reply):
            answered = self._asks.get(envelope.id)
            if answered is not None and not answered.done():
                answered.set_result(envelope.answer)
        elif isinstance(envelope, Ask):
            task = asyncio.ensure_future(self._answer(envelope))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        elif isinstance(envelope, Open):
            # Registered before anything awaits: the socket's first frames follow at once.
            opened = RelayChannel(self, envelope.conn, envelope.origin)
            self.inbound[envelope.conn] = opened
            task = asyncio.ensure_future(self._serve_remote(envelope, opened))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        elif (relayed := self.outbound.get(envelope.conn)) is not None:
            if relayed.outbox.full():  # a browser that stopped reading: let it reconnect
                relayed.outbox = asyncio.Queue(1)
                relayed.outbox.put_nowait(Close(conn=relayed.conn, code=CLOSE_MOVED))
            else:
                relayed.outbox.put_nowait(envelope)
        elif (channel := self.inbound.get(envelope.conn)) is not None:
            if isinstance(envelope, Frame):
                channel.inbox.put_nowait(envelope.text)
            else:
                channel.ended()

    async def _serve_remote(self, opened: Open, channel: RelayChannel) -> None:
        try:
            if self.handed_over:  # the page reconnects, and its room is placed elsewhere
                await channel.close(CLOSE_MOVED)
                return
            host = await self.directory.place(opened.session_id, self.node_id)
            if host != self.node_id or self.serve_here is None:
                await channel.close(CLOSE_MOVED)
                return
            self.hosted.setdefault(opened.session_id, time.monotonic())
            member = member_from(opened.member, channel)
            await self.serve_here(opened.session_id, opened.status, member)
        except Exception:
            log.exception("serving a relayed socket failed")
        finally:
            self.inbound.pop(opened.conn, None)
            if not channel.closed:
                await channel.close(1000)


def default_node_id() -> str:
    return os.uname().nodename or "rapport"

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
from ..settings import usable_cores
from .directory import Directory, LiveCallSummary, NodeInfo, least_loaded, node_channel
from .wire import Close, Frame, MemberSpec, Open, envelope_adapter

log = logging.getLogger("rapport.cluster")

# What the hosting node does with a member whose socket is elsewhere: what ws.py does locally.
ServeHere = Callable[[str, str, Member], Awaitable[None]]
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

    def info(self) -> NodeInfo:
        live = [room for room in self.rooms.rooms.values() if room.members]
        return NodeInfo(
            node_id=self.node_id,
            calls=len(live),
            rooms=len(self.rooms.rooms),
            relayed_sockets=len(self.outbound),
            cpu=self._cpu_read(),
            cores=self._cores,
            draining=self.draining(),
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
        for session_id in set(self.rooms.rooms) | set(self.hosted):
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
        if host == self.node_id:
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
    async def publish(self, node_id: str, envelope: Open | Frame | Close) -> None:
        await self.redis.publish(node_channel(node_id), envelope.model_dump_json())

    async def relay(
        self, ws: WebSocket, host: str, session_id: str, status: str, member: Member
    ) -> None:
        """Carry an accepted browser socket to and from the room on ``host`` until either
        end closes it."""
        conn = uuid.uuid4().hex
        relayed = RelayedSocket(ws=ws, conn=conn, host=host, session_id=session_id)
        self.outbound[conn] = relayed
        spec = MemberSpec(
            role=member.role,
            actor=member.actor,
            participant_id=member.participant_id,
            previously_admitted=member.previously_admitted,
            invite_hash=member.invite_hash,
            invite_expires_at=member.invite_expires_at,
            identity_hash=member.identity_hash,
            address=member.address,
            login_hash=member.login_hash,
            user_id=member.user_id,
            display_name=member.display_name,
        )
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
        if isinstance(envelope, Open):
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
            host = await self.directory.place(opened.session_id, self.node_id)
            if host != self.node_id or self.serve_here is None:
                await channel.close(CLOSE_MOVED)
                return
            self.hosted.setdefault(opened.session_id, time.monotonic())
            spec = opened.member
            member = Member(
                role=spec.role,
                channel=channel,
                actor=spec.actor,
                participant_id=spec.participant_id,
                previously_admitted=spec.previously_admitted,
                invite_hash=spec.invite_hash,
                invite_expires_at=spec.invite_expires_at,
                identity_hash=spec.identity_hash,
                address=spec.address,
                login_hash=spec.login_hash,
                user_id=spec.user_id,
                display_name=spec.display_name,
            )
            await self.serve_here(opened.session_id, opened.status, member)
        except Exception:
            log.exception("serving a relayed socket failed")
        finally:
            self.inbound.pop(opened.conn, None)
            if not channel.closed:
                await channel.close(1000)


def default_node_id() -> str:
    return os.uname().nodename or "rapport"

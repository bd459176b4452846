"""Registry of live rooms, one per session with connected participants."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from media import CallFactory, MediaConfig

from .ice import IceProvider, no_ice
from .limits import Limits
from .room import LobbyLimits, Room, RoomHooks, RoomObserver, SignalsPort, knock_limiter


class RoomRegistry:
    def __init__(
        self,
        hooks: RoomHooks,
        media_config: MediaConfig,
        limits: Limits,
        signals_for: Callable[[str], SignalsPort | None] | None = None,
        observer: RoomObserver | None = None,
        call_factory: CallFactory | None = None,
        ice: IceProvider = no_ice,
        lobby: LobbyLimits | None = None,
    ) -> None:
        self.hooks = hooks
        self.lobby = lobby or LobbyLimits()
        # Knock budgets span rooms: a script knocking on many sessions is one knocker.
        self.knocks_by_identity = knock_limiter(
            self.lobby.knock_burst_identity, self.lobby.knock_per_second_identity
        )
        self.knocks_by_address = knock_limiter(
            self.lobby.knock_burst_address, self.lobby.knock_per_second_address
        )
        self.ice = ice
        self.call_factory = call_factory
        self.media_config = media_config
        self.limits = limits
        self.rooms: dict[str, Room] = {}
        self._signals_for = signals_for
        self.observer = observer
        self._closing: set[asyncio.Task[None]] = set()
        # Called with the session id once an emptied room is closed, so per-session state kept
        # beside the room (the live signals) can be unloaded too.
        self.on_room_closed: Callable[[str], Awaitable[None]] | None = None

    def get(self, session_id: str) -> Room | None:
        return self.rooms.get(session_id)

    def get_or_create(self, session_id: str, status: str) -> Room:
        room = self.rooms.get(session_id)
        if room is None:
            signals = self._signals_for(session_id) if self._signals_for else None
            room = Room(
                session_id,
                self.hooks,
                self.media_config,
                self.limits,
                status=status,
                signals=signals,
                observer=self.observer,
                call_factory=self.call_factory,
                ice=self.ice,
                lobby=self.lobby,
                knocks_by_identity=self.knocks_by_identity,
                knocks_by_address=self.knocks_by_address,
            )
            room.on_empty = self._drop
            self.rooms[session_id] = room
        return room

    def _drop(self, room: Room) -> None:
        # Keep rooms of live sessions with nobody connected out of memory too: their state is
        # in the database and a new room is built on the next connection.
        if self.rooms.get(room.session_id) is room:
            del self.rooms[room.session_id]
        task = asyncio.ensure_future(self._close_dropped(room))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_dropped(self, room: Room) -> None:
        await room.close()
        if self.on_room_closed is not None:
            await self.on_room_closed(room.session_id)

    async def sign_out(self, *, login_hash: str | None = None, user_id: int | None = None) -> int:
        """Close the therapist sockets of a signed-out login (or of all of a user's logins)."""
        closed = 0
        for room in list(self.rooms.values()):
            closed += await room.sign_out(login_hash=login_hash, user_id=user_id)
        return closed

    async def close_all(self, code: int | None = None) -> None:
        """Close every room without ending its session.

        ``code``: close the sockets with it first (1012 "service restart" on shutdown, so the
        pages reconnect to the next process).
        """
        for room in list(self.rooms.values()):
            if code is not None:
                for member in list(room.members):
                    with contextlib.suppress(Exception):
                        await member.channel.close(code)
            await room.close()
        self.rooms.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

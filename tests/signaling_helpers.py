"""A WebSocket participant for tests: speaks the signalling protocol like the web client."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import websockets

from tests.media_helpers import FakeBrowser


async def open_socket(url: str, **kwargs: Any) -> websockets.ClientConnection:
    """A client socket that takes in every frame the server sends, read or not.

    Tests read only the messages they expect. With websockets' default queue (16 frames) the
    library stops reading the socket once 16 are unread, so the server's answer to our close
    frame waits behind them and ``close()`` sits out its 10 s timeout (a chat flood and the
    knock-limit test each spent 10 s that way). Nothing the server does depends on it.
    """
    return await websockets.connect(url, max_queue=None, **kwargs)


class Participant:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self.browser: FakeBrowser | None = None

    @classmethod
    async def connect(cls, url: str, cookie: str, origin: str | None = None) -> Participant:
        headers = {"Cookie": cookie}
        if origin:
            headers["Origin"] = origin
        ws = await open_socket(url, additional_headers=headers, max_size=2**22)
        return cls(ws)

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def expect(self, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """Next message of ``kind`` (matching fields), keeping others in the inbox."""
        for i, message in enumerate(self.inbox):
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return self.inbox.pop(i)

        async def _next() -> dict[str, Any]:
            while True:
                message: dict[str, Any] = json.loads(await self.ws.recv())
                if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                    return message
                self.inbox.append(message)

        return await asyncio.wait_for(_next(), timeout)

    async def error(self, timeout: float = 10.0) -> dict[str, Any]:
        return await self.expect("error", timeout)

    async def start_media(self, browser: FakeBrowser | None = None) -> None:
        self.browser = browser or FakeBrowser()
        await self.send({"type": "offer", "sdp": await self.browser.offer()})
        answer = await self.expect("answer", timeout=20)
        await self.browser.accept(answer["sdp"])

    def seen(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.inbox if m["type"] == kind]

    async def close(self) -> None:
        if self.browser is not None:
            await self.browser.close()
        await self.ws.close()


def login_cookie(client: httpx.AsyncClient) -> str:
    return f"rapport_login={client.cookies['rapport_login']}"


def new_client_cookie() -> str:
    return f"rapport_client={secrets.token_urlsafe(24)}"


def invite_token(invite_url: str) -> str:
    return invite_url.rsplit("/join/", 1)[1]


async def open_room(
    ws_base: str, therapist: httpx.AsyncClient, client_label: str = ""
) -> tuple[dict[str, Any], Participant, Participant, str]:
    """A session with the therapist joined and a client admitted (no media yet).

    Returns the session JSON, the therapist, the client and the client's identity cookie.
    """
    response = await therapist.post("/api/sessions", json={"client_label": client_label})
    assert response.status_code == 201, response.text
    session = response.json()
    t = await Participant.connect(f"{ws_base}/ws/sessions/{session['id']}", login_cookie(therapist))
    await t.send({"type": "join"})
    await t.expect("joined")
    cookie = new_client_cookie()
    c = await Participant.connect(
        f"{ws_base}/ws/join/{invite_token(session['invite_url'])}", cookie
    )
    await c.send({"type": "join"})
    participant_id = await next_waiting(t)
    await t.send({"type": "admit", "participant_id": participant_id})
    await c.expect("admitted")
    return session, t, c, cookie


async def next_waiting(therapist: Participant) -> int:
    """The participant id of the first person in the therapist's next non-empty lobby."""
    lobby = await therapist.expect("lobby")
    while not lobby["waiting"]:
        lobby = await therapist.expect("lobby")
    return int(lobby["waiting"][0]["participant_id"])


class MemoryChannel:
    """An in-memory socket for a Room (satisfies signaling.room.Channel): what the room sends
    lands in ``outbox``; ``inbox`` feeds it; the close code it was given is kept."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.outbox: list[dict[str, Any]] = []
        self.closed = False
        self.close_code: int | None = None

    async def receive_text(self) -> str:
        item = await self.inbox.get()
        if item is None:
            raise ConnectionError("closed")
        return item

    async def send_text(self, data: str) -> None:
        self.outbox.append(json.loads(data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = True
        self.close_code = code
        self.inbox.put_nowait(None)

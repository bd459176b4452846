"""``rapport bench-signals``: how fast the speaking indicator reaches the therapist.

Runs a real server on 127.0.0.1 (temporary SQLite), a therapist and a client as aiortc peers
over the real signalling protocol, and has the client start speaking at known moments. The
latency is from the moment the first speech frame is handed to the client's sender until the
therapist's socket receives a ``speaking`` message naming the client: it includes Opus
encode/decode, the server's jitter buffer, voice activity, the engine and the socket.

Beside it, the signals' CPU per session: the CPU time (``time.thread_time``) the signal
thread spent stepping this session (downmix, voice activity, engine, snapshots) divided by
the seconds of session the engine covered. It is the thread's own CPU clock, so decoding in
the media workers, the event loop and anything else running on the machine are not in it;
the thread's total CPU per wall second (idle wake-ups and publishing included) is reported
too, so the per-session figure can be checked against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import tempfile
import threading
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import uvicorn
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from media.relay.ice import restrict_host_addresses
from server.alliance_hub import SignalsHub
from server.app import create_app
from server.bench.stats import percentile
from server.bench.synthetic import ScheduledSpeechTrack, SilenceTrack
from server.db import Database
from server.models import User, UserRole
from server.security import hash_password
from server.settings import Settings

PASSWORD = "bench-password-0123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Peer:
    """An offering peer (like a browser) that reads and discards what it receives."""

    def __init__(self, audio: MediaStreamTrack) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(audio)
        self.pc.addTransceiver("video", direction="recvonly")
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def drain() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()

        self._readers.append(asyncio.ensure_future(drain()))

    async def negotiate(self, ws: websockets.ClientConnection, inbox: asyncio.Queue[Any]) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        await ws.send(json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp}))
        while True:
            message = await asyncio.wait_for(inbox.get(), 20)
            if message["type"] == "answer":
                break
        await self.pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()


async def _pump(
    ws: websockets.ClientConnection,
    inbox: asyncio.Queue[Any],
    speaking: list[tuple[float, list[str]]],
) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "speaking":
                speaking.append((time.monotonic(), message["speaking"]))
            else:
                await inbox.put(message)


async def _expect(inbox: asyncio.Queue[Any], kind: str) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(inbox.get(), 20)
        if message["type"] == kind and (kind != "lobby" or message["waiting"]):
            return dict(message)


def _signals_cpu(hub: SignalsHub, session_id: str) -> dict[str, Any]:
    """The session's signal CPU, read before the session ends and its signals are dropped."""
    signals = hub.sessions.get(session_id)
    thread = hub.thread
    wall = None if thread.started_at is None else time.monotonic() - thread.started_at
    per_session = None if signals is None else signals.cpu_per_session_second
    return {
        "per_session_cpu_s_per_s": None if per_session is None else round(per_session, 4),
        "session_s": None if signals is None else round(signals.engine.now_s, 2),
        "session_cpu_s": None if signals is None else round(signals.cpu_s, 3),
        "thread_cpu_s_per_s": None if not wall else round(thread.cpu_s / wall, 4),
        "target_cpu_s_per_s": 0.03,
    }


def _open_session(base: str) -> tuple[dict[str, Any], str]:
    """Sign in and create a session with the standard library: `rapport bench-signals` runs
    on a runtime install, where the test-only HTTP client (httpx) is absent."""
    cookies = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Origin": base},
            method="POST",
        )
        with opener.open(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    post("/api/login", {"email": "bench@example.org", "password": PASSWORD})
    session = post("/api/sessions", {})
    login = next(c.value for c in cookies if c.name == "rapport_login")
    return session, f"rapport_login={login}"


async def _run(
    base: str, hub: SignalsHub, onsets: int, gap_s: float, burst_s: float
) -> dict[str, Any]:
    restrict_host_addresses(["127.0.0.1"])
    ws_base = base.replace("http://", "ws://")
    session, login = await asyncio.to_thread(_open_session, base)
    token = session["invite_url"].rsplit("/join/", 1)[1]
    # Each onset shifted by its own fraction of 200 ms (golden-ratio steps): the signal thread
    # wakes every RAPPORT_SIGNAL_TICK_MS, and onsets at one fixed phase of its wake-ups would
    # all wait the same, hiding the spread of the speaking indicator's delay.
    bursts = [
        (2.0 + i * (gap_s + burst_s) + (i * 0.6180339887 % 1.0) * 0.2, burst_s)
        for i in range(onsets)
    ]
    client_audio = ScheduledSpeechTrack(bursts)
    t_in: asyncio.Queue[Any] = asyncio.Queue()
    c_in: asyncio.Queue[Any] = asyncio.Queue()
    speaking: list[tuple[float, list[str]]] = []
    t_ws = await websockets.connect(
        f"{ws_base}/ws/sessions/{session['id']}", additional_headers={"Cookie": login}
    )
    c_ws = await websockets.connect(
        f"{ws_base}/ws/join/{token}",
        additional_headers={"Cookie": f"rapport_client={secrets.token_urlsafe(16)}"},
    )
    pumps = [
        asyncio.ensure_future(_pump(t_ws, t_in, speaking)),
        asyncio.ensure_future(_pump(c_ws, c_in, [])),
    ]
    therapist, client = _Peer(SilenceTrack()), _Peer(client_audio)
    try:
        await t_ws.send(json.dumps({"type": "join"}))
        await _expect(t_in, "joined")
        await c_ws.send(json.dumps({"type": "join"}))
        lobby = await _expect(t_in, "lobby")
        await t_ws.send(
            json.dumps({"type": "admit", "participant_id": lobby["waiting"][0]["participant_id"]})
        )
        await _expect(c_in, "admitted")
        await therapist.negotiate(t_ws, t_in)
        await client.negotiate(c_ws, c_in)
        end = bursts[-1][0] + burst_s + 2.0
        deadline = time.monotonic() + end + 20
        while (
            len(client_audio.onsets) < onsets
            or time.monotonic() - client_audio.onsets[-1] < burst_s + 1.0
        ):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        cpu = _signals_cpu(hub, session["id"])
        await t_ws.send(json.dumps({"type": "end"}))
    finally:
        await therapist.close()
        await client.close()
        await t_ws.close()
        await c_ws.close()
        for pump in pumps:
            pump.cancel()
    latencies: list[float] = []
    for onset in client_audio.onsets:
        hit = next((at for at, who in speaking if at >= onset and "client" in who), None)
        if hit is not None and hit - onset < burst_s:
            latencies.append((hit - onset) * 1000)
    return _summary(latencies, len(client_audio.onsets), cpu)


def _summary(
    latencies: list[float], onsets: int, cpu: dict[str, Any] | None = None
) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        value = percentile(ordered, p)
        return None if value is None else round(value, 1)

    return {
        "onsets": onsets,
        "detected": len(ordered),
        "speaking_latency_ms": {
            "p50": pct(0.5),
            "p95": pct(0.95),
            "max": round(ordered[-1], 1) if ordered else None,
            "all": [round(v, 1) for v in latencies],
        },
        "budget_ms": 400,
        "signals_cpu": cpu,
    }


def run(
    onsets: int = 10,
    gap_s: float = 2.5,
    burst_s: float = 1.5,
    media_workers: int | None = None,
    silero_assist: bool | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rapport-bench-") as tmp:
        port = _free_port()
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
            public_url=f"http://127.0.0.1:{port}",
            host="127.0.0.1",
            port=port,
            media_addresses=["127.0.0.1"],
            allow_loopback_candidates=True,
            log_json=False,
            media_workers=media_workers,
        )
        if silero_assist is not None:
            settings = settings.model_copy(update={"silero_assist": silero_assist})

        async def seed() -> None:
            database = Database(settings.database_url)
            await database.create_schema()
            async with database.session() as db:
                db.add(
                    User(
                        email="bench@example.org",
                        role=UserRole.THERAPIST,
                        password_hash=hash_password(PASSWORD),
                    )
                )
                await db.commit()
            await database.dispose()

        asyncio.run(seed())
        app = create_app(settings)
        hub: SignalsHub = app.state.signals
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            result = asyncio.run(_run(f"http://127.0.0.1:{port}", hub, onsets, gap_s, burst_s))
            result["media_workers"] = settings.media_worker_count
            result["silero_assist"] = settings.silero_assist
            return result
        finally:
            server.should_exit = True
            thread.join(timeout=15)


def main(
    onsets: int,
    json_path: str | None,
    media_workers: int | None = None,
    silero_assist: bool | None = None,
) -> int:
    result = run(onsets=onsets, media_workers=media_workers, silero_assist=silero_assist)
    lat = result["speaking_latency_ms"]
    print("Speaking indicator: speech onset at the client → 'speaking' on the therapist's socket")
    print(f"  onsets {result['onsets']}, detected {result['detected']}")
    print(f"  media workers: {result['media_workers']}")
    print(f"  Silero assist: {'on' if result['silero_assist'] else 'off'}")
    print(f"  p50 {lat['p50']} ms   p95 {lat['p95']} ms   max {lat['max']} ms   (budget 400 ms)")
    cpu = result["signals_cpu"]
    print("Signals CPU (signal thread's own CPU clock: downmix + VAD + engine)")
    print(
        f"  per session {cpu['per_session_cpu_s_per_s']} CPU s/s over {cpu['session_s']} s"
        f"   whole thread {cpu['thread_cpu_s_per_s']} CPU s/s"
        f"   (target < {cpu['target_cpu_s_per_s']})"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return 0 if result["detected"] == result["onsets"] else 1

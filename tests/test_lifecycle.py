"""Sessions across their lifetime on a node: abandoned ones are ended, idle ones cost nothing,
and many join/leave cycles leave no residue behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import event, select

import server.alliance_hub as alliance_hub
from server.db import Database
from server.models import AuditEvent, SessionStatus, TherapySession
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.media_helpers import FakeBrowser
from tests.server_process import RapportServer, rapport_server_process
from tests.signaling_helpers import Participant, invite_token, login_cookie, open_room
from tests.support import eventually


@pytest.fixture
def idle_end_after_1s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions nobody is in are ended after 1 s (set before the server reads its settings)."""
    monkeypatch.setenv("RAPPORT_IDLE_END_AFTER_S", "1")


async def _rows(settings_url: str, *query: Any) -> list[Any]:
    database = Database(settings_url)
    try:
        async with database.session() as db:
            return list((await db.execute(select(*query))).all())
    finally:
        await database.dispose()


@NO_MEDIA_WORKER
async def test_abandoned_live_session_is_ended_and_audited_an_occupied_one_is_not(
    idle_end_after_1s: None, live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    ws = live_server.ws_url
    # Occupied: the client left, the therapist is still in the room.
    occupied, t_kept, c_gone, _ = await open_room(ws, therapist)
    await c_gone.close()
    # Abandoned afterwards (so it is idle no longer than the occupied one): both gone.
    abandoned, t, c, _ = await open_room(ws, therapist)
    await c.close()
    await t.close()
    for session in (occupied, abandoned):
        assert (await therapist.get(f"/api/sessions/{session['id']}")).json()["status"] == "live"

    async def ended() -> bool:
        response = await therapist.get(f"/api/sessions/{abandoned['id']}")
        return bool(response.json()["status"] == "ended")

    await eventually(ended, timeout=15, interval=0.2, message="abandoned session ended")
    audits = await _rows(
        live_server.settings.database_url,
        AuditEvent.session_id,
        AuditEvent.action,
        AuditEvent.actor,
    )
    auto = [(s, actor) for s, action, actor in audits if action == "session_auto_ended"]
    assert auto == [(abandoned["id"], "system")]
    # The same pass saw the occupied session idle at least as long by the database's
    # timestamps, and spared it because someone is in its room.
    assert (await therapist.get(f"/api/sessions/{occupied['id']}")).json()["status"] == "live"
    await t_kept.send({"type": "ping", "t": 1})
    await t_kept.expect("pong")
    await t_kept.close()


@pytest.fixture
def fast_persistence(monkeypatch: pytest.MonkeyPatch) -> float:
    """Signals persist every 0.4 s instead of 5 s, so a few periods fit in a short test."""
    monkeypatch.setattr(alliance_hub, "PERSIST_EVERY_S", 0.4)
    return 0.4


# A dropped seat is held for reconnection first (RAPPORT_RECONNECT_GRACE_S): keep it short here.
@pytest.mark.parametrize(
    "live_server",
    [{"media_workers": 0, "reconnect_grace_s": 0.5}],
    indirect=True,
    ids=["no-worker"],
)
async def test_idle_live_session_is_never_rewritten_and_unloads_with_its_room(
    fast_persistence: float, live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    app: Any = live_server.app
    url = live_server.settings.database_url
    session = (await therapist.post("/api/sessions", json={})).json()
    stored_input = [[4, 3000], [7, 250], [4, 500]]  # a minute of signals before a restart
    database = Database(url)
    async with database.session() as db:
        row = await db.get(TherapySession, session["id"])
        assert row is not None
        row.status = SessionStatus.LIVE
        row.signal_input = stored_input
        await db.commit()
    await database.dispose()

    # Every read or write of the sessions table: a save that finds nothing changed still
    # reads the row and commits (the ORM then skips the UPDATE), and that is the cost.
    writes: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if re.search(r"\b(UPDATE|FROM) sessions\b", statement):
            writes.append(statement)

    event.listen(app.state.database.engine.sync_engine, "before_cursor_execute", count)
    hub = app.state.signals
    t = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await t.send({"type": "join"})
    await t.expect("joined")
    assert hub.sessions[session["id"]].input_runs() == stored_input  # resumed
    await t.expect("agenda")  # the join's own reads are done
    writes.clear()

    # In its room but idle (no media, so no new input): five save periods, no write.
    await asyncio.sleep(5 * fast_persistence)
    print(f"\nsaves of an idle live session over 5 save periods: {len(writes)}")
    assert writes == [], writes

    # Everyone gone: the room and the signals leave memory, with nothing written.
    await t.close()
    await eventually(
        lambda: session["id"] not in hub.sessions and app.state.rooms.get(session["id"]) is None,
        timeout=5,
        message="room and signals unloaded",
    )
    await asyncio.sleep(3 * fast_persistence)
    assert writes == []

    # Someone returns: the signals resume from the store, nothing lost.
    t = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await t.send({"type": "join"})
    await t.expect("joined")
    assert hub.sessions[session["id"]].input_runs() == stored_input
    await t.close()
    event.remove(app.state.database.engine.sync_engine, "before_cursor_execute", count)


# --------------------------------------------------------------------------- leak soak

LONG = os.environ.get("RAPPORT_LONG_TESTS") == "1"
CYCLES = 500 if LONG else 30


# SQLAlchemy's pool for a SQLite file keeps up to 5 connections (pool_size), each with its
# own aiosqlite thread and file descriptors (database, -wal, -shm): the pool grows to what
# the busiest moment needed and stays there, which is not a leak.
DB_POOL_SIZE = 5


def _proc_figures(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    db_fds = sum("/rapport.db" in link for link in links)
    db_connections = sum(link.endswith("/rapport.db") for link in links)
    threads = int(fields["Threads"].strip())
    return {
        "fds": len(links),
        "threads": threads,
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "db_connections": db_connections,
        # What is left once the database pool is set aside: what a leak would grow.
        "other_fds": len(links) - db_fds,
        "other_threads": threads - db_connections,
    }


def _gauge(text: str, name: str) -> int:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return int(float(match.group(1)))


@pytest.fixture
def soak_server(tmp_path: Path) -> Iterator[RapportServer]:
    # One client rejoins many times a minute here, and its dropped seats must free promptly.
    env = {
        "RAPPORT_MEDIA_WORKERS": "1",
        "RAPPORT_CONNECTS_PER_MINUTE": "100000",
        # Every fifth cycle a new client knocks from this one address: 100 knocks in the
        # long run, beyond the per-address knock budget meant for scripts.
        "RAPPORT_KNOCKS_PER_MINUTE_PER_ADDRESS": "100000",
        "RAPPORT_RECONNECT_GRACE_S": "1",
    }
    with rapport_server_process(tmp_path, env) as server:
        yield server


def _udp_sockets(pid: int) -> int:
    """UDP sockets the process holds: its ICE ports (one per gathered candidate)."""
    inodes: set[str] = set()
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            inodes.update(line.split()[9] for line in lines)
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


class _Reader:
    """Reads a participant's socket all the time, as a browser does.

    A socket nobody reads is not a participant: once 16 messages queue up, the websockets
    client stops reading, so it no longer sees keepalive pongs, and the connection is dropped
    40 s in (ping interval + timeout). The soak's therapist used to be such a socket, and
    its seat was released mid-run, taking the client's audio with it.
    """

    def __init__(self, p: Participant) -> None:
        self.p = p
        self.messages = 0
        self.closed: str | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async for raw in self.p.ws:
                self.messages += 1
                json.loads(raw)
        except websockets.ConnectionClosed:
            pass
        self.closed = f"closed (code {self.p.ws.close_code}, {self.p.ws.close_reason!r})"

    def describe(self) -> str:
        return f"{self.messages} messages read, socket {self.closed or 'open'}"

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


async def _drop(p: Participant) -> None:
    """A killed browser: the TCP connection vanishes without a close frame or a leave."""
    p.ws.transport.abort()
    if p.browser is not None:
        await p.browser.close()


@pytest.mark.slow
@pytest.mark.timeout(3600 if LONG else 300)  # 500 cycles take 2.5-5 min on a busy machine
async def test_join_leave_cycles_leave_no_residue(soak_server: RapportServer) -> None:
    server = soak_server
    therapist = httpx.AsyncClient(base_url=server.base_url, timeout=10)
    admin = httpx.AsyncClient(base_url=server.base_url, timeout=10)
    for http, role in ((therapist, "therapist"), (admin, "admin")):
        email, password = server.users[role]
        response = await http.post("/api/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
    health = (await admin.get("/api/admin/health")).json()
    worker_pid = int(health["media_workers"][0]["pid"])
    pids = {"server": server.process.pid, "worker": worker_pid}

    # One session held open by the therapist, with media; the client comes and goes.
    session, t, c, client_cookie = await open_room(server.ws_url, therapist)
    await t.start_media()
    await c.close()
    therapist_socket = _Reader(t)
    join_url = f"{server.ws_url}/ws/join/{invite_token(session['invite_url'])}"

    async def cycle(i: int) -> None:
        if i % 5 == 4:
            # A session abandoned mid-call: both sockets dropped, never ended.
            _, t2, c2, _ = await open_room(server.ws_url, therapist)
            await t2.start_media()
            await c2.start_media()
            assert c2.browser is not None
            await c2.browser.wait_for("audio", 3, timeout=20)
            await _drop(c2)
            await _drop(t2)
            return
        p = await Participant.connect(join_url, client_cookie)
        await p.send({"type": "join"})
        await p.expect("admitted", timeout=10)
        if i % 5 == 3:  # bad SDP: refused precisely, the call goes on
            await p.send({"type": "offer", "sdp": "v=0\r\nthis is not sdp\r\n"})
            assert (await p.error())["code"] == "bad_sdp"
            await _drop(p)
            return
        await p.start_media(FakeBrowser())
        assert p.browser is not None
        await p.browser.wait_for("audio", 3, timeout=20)
        if i % 5 == 2:
            await _drop(p)
        else:
            await p.send({"type": "leave"})
            await p.expect("left")
            await p.close()

    async def figures() -> dict[str, int]:
        metrics = (await admin.get("/metrics")).text
        h = (await admin.get("/api/admin/health")).json()
        out = {
            f"{name}_{k}": v for name, pid in pids.items() for k, v in _proc_figures(pid).items()
        }
        out["tasks"] = _gauge(metrics, "rapport_asyncio_tasks")
        out["worker_tasks"] = int(h["media_workers"][0]["tasks"])
        out["worker_udp_sockets"] = _udp_sockets(worker_pid)
        out["worker_calls"] = int(h["media_workers"][0]["calls"])
        out["worker_peers"] = int(h["media_workers"][0]["peers"])
        out["signals_loaded"] = _gauge(metrics, "rapport_signal_sessions_loaded")
        out["rooms"] = int(h["rooms"])
        out["peers"] = int(h["peer_connections"])
        return out

    async def settled(base: dict[str, int] | None) -> dict[str, int] | None:
        """Figures once only the therapist's call is left (and, given a baseline, back to it)."""
        now = await figures()
        if now["rooms"] != 1 or now["peers"] != 1 or now["signals_loaded"] != 1:
            return None
        if base is None:
            return now
        for key, slack in (("other_fds", 4), ("other_threads", 2)):
            for name in pids:
                if now[f"{name}_{key}"] > base[f"{name}_{key}"] + slack:
                    return None
        if now["server_db_connections"] > DB_POOL_SIZE:
            return None
        if now["worker_udp_sockets"] > base["worker_udp_sockets"]:
            return None
        ok = now["tasks"] <= base["tasks"] + 5 and now["worker_tasks"] <= base["worker_tasks"] + 5
        return now if ok else None

    async def state(i: int, exc: BaseException) -> str:
        """What a failed cycle leaves to look at: the cycle, the processes, the calls."""
        lines = [f"cycle {i} (of {5 + CYCLES}) failed: {type(exc).__name__}: {exc}"]
        with contextlib.suppress(Exception):
            lines += [f"  {k}: {v}" for k, v in sorted((await figures()).items())]
        with contextlib.suppress(Exception):
            calls = (await admin.get("/api/admin/calls")).json()["calls"]
            lines.append(f"  live calls: {[(x['session_id'], x['participants']) for x in calls]}")
        lines.append(f"  held session {session['id']}: therapist {therapist_socket.describe()}")
        lines.append("server log tail:\n" + server.log_tail(3000))
        return "\n".join(lines)

    async def run_cycle(i: int) -> None:
        try:
            await cycle(i)
        except Exception as exc:
            raise AssertionError(await state(i, exc)) from exc

    for i in range(5):  # warm-up: lazy imports, thread pools, codec set-up
        await run_cycle(i)
    base = await eventually(lambda: settled(None), timeout=60, interval=0.5, message="settled")
    started = time.monotonic()
    for i in range(5, 5 + CYCLES):
        await run_cycle(i)
        if LONG and i % 100 == 4:
            print(f"cycle {i}: {time.monotonic() - started:.0f} s, {await figures()}", flush=True)
    took = time.monotonic() - started

    def report(now: dict[str, int] | None = None) -> str:
        rows = [f"{k}: {base[k]}" + (f" -> {now[k]}" if now else "") for k in sorted(base)]
        return f"{CYCLES} cycles in {took:.0f} s\n  " + "\n  ".join(rows)

    try:
        after = await eventually(
            lambda: settled(base), timeout=60, interval=0.5, message="back to baseline"
        )
    except TimeoutError:
        raise AssertionError(f"not back to baseline:\n{report(await figures())}") from None
    print("\n" + report(after))
    for name in pids:
        grown_mb = (after[f"{name}_rss_kb"] - base[f"{name}_rss_kb"]) / 1024
        # Measured for 500 cycles: +13.5 to +15.0 MB server, +15.5 to +16.6 MB worker; for 1500
        # cycles +17.6 and +17.1 MB (warm-up that levels off by ~500 cycles, not a steady
        # leak). 120 MB let a leak of 200 KB per cycle through; 40 MB leaves 2.5 times that.
        assert grown_mb < 40, report(after)
    # The held call lasted the whole run: its therapist never dropped.
    assert therapist_socket.closed is None, therapist_socket.describe()
    await therapist_socket.stop()
    await t.close()
    await therapist.aclose()
    await admin.aclose()

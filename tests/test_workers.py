"""Media worker processes: calls pinned to real worker processes, loopback peers, no browser.

Each test starts a real ``MediaWorkerPool`` (``python -m media.workers.worker`` children joined by a
socketpair) with media bound to 127.0.0.1, and drives it with aiortc peers in this process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiortc.stats import RTCInboundRtpStreamStats

from media.relay.call import AudioInput, MediaUnavailable
from media.relay.ice import MediaConfig
from media.relay.sdp import SdpError
from media.workers import wire
from media.workers.messages import Ready
from media.workers.pool import MediaWorkerPool, RemoteCall
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack
from tests.support import eventually

CONFIG = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))


@pytest.fixture
async def pool() -> AsyncIterator[MediaWorkerPool]:
    pool = MediaWorkerPool(CONFIG, 2)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def _join(call: RemoteCall, role: str, browser: FakeBrowser) -> None:
    await browser.accept(await call.connect(role, await browser.offer()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


async def test_call_in_a_worker_relays_media_and_delivers_mono_audio(
    pool: MediaWorkerPool,
) -> None:
    audio: dict[str, list[np.ndarray]] = {"therapist": [], "client": []}
    not_pcm: list[AudioInput] = []

    def on_audio(role: str, pcm: AudioInput) -> None:
        # A worker sends mono PCM across the process boundary, never an av frame.
        if isinstance(pcm, np.ndarray):
            audio[role].append(pcm)
        else:
            not_pcm.append(pcm)

    states: list[tuple[str, str]] = []
    call = pool.call(
        "s1",
        on_audio=on_audio,
        on_media_state=lambda role, state: states.append((role, state)),
    )
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((220, 30, 30)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((30, 30, 220)))
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await client.wait_for("video", 10)
        await therapist.wait_for("video", 10)
        await eventually(lambda: len(audio["client"]) > 20 and len(audio["therapist"]) > 20)
        # The peers live in the worker, not here.
        assert call.worker.pid != os.getpid() and call.worker.pid is not None
        assert call.relay_mode == {"therapist->client": "forward", "client->therapist": "forward"}
        assert call.peer_count == 2
        await eventually(lambda: call.media_state("client") == "connected")
        assert ("client", "connected") in states
        # 48 kHz mono int16, 20 ms a frame, carrying the client's tone.
        assert not not_pcm
        pcm = np.concatenate(audio["client"][-20:])
        assert pcm.dtype == np.int16 and audio["client"][-1].size == 960
        spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
        peak_hz = np.argmax(spectrum) * 48_000 / pcm.size
        assert abs(peak_hz - 660) < 15
        # Quality reports cross the process boundary as aiortc's own stats objects.
        reports = {r.role: r for r in await call.peer_reports()}
        assert set(reports) == {"therapist", "client"}
        inbound = [
            s for s in reports["client"].rtc.values() if isinstance(s, RTCInboundRtpStreamStats)
        ]
        assert inbound and max(s.packetsReceived for s in inbound) > 0
        stats = await call.relay_stats()
        assert stats["peers"]["client"]["outbound"]["video"]["forwarded"] > 0
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_sessions_spread_over_workers_and_stay_pinned(pool: MediaWorkerPool) -> None:
    first, second = pool.call("a"), pool.call("b")
    assert {first.worker.index, second.worker.index} == {0, 1}
    browsers = [FakeBrowser(), FakeBrowser()]
    try:
        await _join(first, "therapist", browsers[0])
        await _join(first, "client", browsers[1])
        pinned = first.worker.pid
        health = {h["index"]: h for h in await pool.health()}
        assert health[first.worker.index]["peers"] == 2
        assert health[second.worker.index]["peers"] == 0
        assert all(h["alive"] for h in health.values())
        await first.disconnect("client")
        await _join(first, "client", browsers[1])  # a rejoin stays in the same worker
        assert first.worker.pid == pinned
    finally:
        for browser in browsers:
            await browser.close()
        await first.close()
        await second.close()


async def test_bad_offer_is_an_sdp_error_and_the_call_goes_on(pool: MediaWorkerPool) -> None:
    call = pool.call("s-bad")
    therapist, client = FakeBrowser(), FakeBrowser(ToneTrack(440), ColorTrack((0, 200, 0)))
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await therapist.wait_for("video", 5)
        for bad in ("v=0\r\nthis is not sdp", "x" * 1000, ""):
            with pytest.raises(SdpError):
                await call.connect("client", bad)
        seen = len(therapist.received["video"])
        await therapist.wait_for("video", seen + 10)
        assert call.peer_count == 2
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_a_dead_worker_is_replaced_and_the_call_reconnects(
    pool: MediaWorkerPool, caplog: pytest.LogCaptureFixture
) -> None:
    states: list[tuple[str, str]] = []
    call = pool.call("s-crash", on_media_state=lambda role, state: states.append((role, state)))
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((200, 0, 0)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((0, 0, 200)))
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await eventually(lambda: call.media_state("client") == "connected", timeout=10)
        dead_pid = call.worker.pid
        assert dead_pid is not None
        with caplog.at_level(logging.ERROR, logger="rapport.media.workers.pool"):
            os.kill(dead_pid, signal.SIGKILL)
            await eventually(lambda: call.media_state("client") == "lost", timeout=10)
        assert call.peer_count == 0
        assert any("exited" in r.getMessage() for r in caplog.records)
        await eventually(lambda: all(w.alive for w in pool.workers), timeout=30)
        assert pool.restarts == 1 and dead_pid not in {w.pid for w in pool.workers}
        # The browsers re-offer; the call lands on a live worker and media flows again.
        for old in (therapist, client):
            await old.close()
        therapist = FakeBrowser(ToneTrack(440), ColorTrack((200, 0, 0)))
        client = FakeBrowser(ToneTrack(660), ColorTrack((0, 0, 200)))
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await client.wait_for("video", 10)
        assert call.worker.alive and call.worker.pid != dead_pid
        await eventually(lambda: call.media_state("client") == "connected", timeout=10)
    finally:
        await therapist.close()
        await client.close()
        await call.close()


async def test_with_one_worker_a_started_spare_takes_over_a_crashed_call() -> None:
    """The re-offers after a crash are answered by a process that was running before it, not
    by a replacement that first spends ~2 s importing aiortc; a new spare follows."""
    pool = MediaWorkerPool(CONFIG, 1)  # one worker: a spare by default
    await pool.start()
    call = pool.call("s-spare")
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((200, 0, 0)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((0, 0, 200)))
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await client.wait_for("video", 3)

        def spare_ready() -> bool:
            spare = getattr(pool, "spare", None)
            return spare is not None and spare.is_ready

        await eventually(spare_ready, timeout=60, message="a started spare worker")
        running = {w.pid for w in pool.workers} | {pool.spare.pid if pool.spare else None}
        dead_pid = call.worker.pid
        assert dead_pid is not None and len(running) == 2
        started = asyncio.get_running_loop().time()
        os.kill(dead_pid, signal.SIGKILL)
        await eventually(lambda: call.media_state("client") == "lost", timeout=10)
        for old in (therapist, client):
            await old.close()
        therapist = FakeBrowser(ToneTrack(440), ColorTrack((200, 0, 0)))
        client = FakeBrowser(ToneTrack(660), ColorTrack((0, 0, 200)))
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        answered = asyncio.get_running_loop().time() - started
        await client.wait_for("video", 3, timeout=20)
        print(f"\nre-offers answered {answered:.2f} s after the SIGKILL, by pid {call.worker.pid}")
        assert call.worker.pid in running - {dead_pid}
        assert pool.restarts == 1 and [w.pid for w in pool.workers] == [call.worker.pid]
        # A new spare is started for the next crash.
        await eventually(spare_ready, timeout=60, message="a new spare worker")
        assert pool.spare is not None and pool.spare.pid not in running
    finally:
        await therapist.close()
        await client.close()
        await call.close()
        await pool.close()


async def test_workers_exit_when_the_server_goes_away() -> None:
    pool = MediaWorkerPool(CONFIG, 1)
    await pool.start()
    pid = pool.workers[0].pid
    assert pid is not None and _alive(pid)
    # Closing the server's end of the socket is what a killed server does too.
    assert pool.workers[0].writer is not None
    pool.closing = True
    pool.workers[0].writer.close()
    await eventually(lambda: not _alive(pid), timeout=10)
    await pool.close()
    with pytest.raises(MediaUnavailable):
        await pool.call("late").connect("therapist", "v=0")


async def test_worker_logs_reach_the_server_log(
    pool: MediaWorkerPool, caplog: pytest.LogCaptureFixture
) -> None:
    call = pool.call("s-log")
    with caplog.at_level(logging.INFO):
        try:
            with pytest.raises(SdpError):
                # aiortc rejects this offer; the worker logs why (by exception type only).
                await call.connect("therapist", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n")
            await eventually(lambda: any("[media worker" in r.getMessage() for r in caplog.records))
        finally:
            await call.close()


async def test_a_hung_worker_is_killed_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    pool = MediaWorkerPool(CONFIG, 1, watch_every_s=0.3, hung_after_s=1.0)
    await pool.start()
    states: list[tuple[str, str]] = []
    call = pool.call("s-hung", on_media_state=lambda role, state: states.append((role, state)))
    therapist, client = FakeBrowser(ToneTrack(440)), FakeBrowser(ToneTrack(660))
    try:
        await _join(call, "therapist", therapist)
        await _join(call, "client", client)
        await eventually(lambda: call.media_state("client") == "connected", timeout=10)
        hung = pool.workers[0].pid
        assert hung is not None
        with caplog.at_level(logging.ERROR, logger="rapport.media.workers.pool"):
            os.kill(hung, signal.SIGSTOP)  # alive, but answering nothing
            await eventually(lambda: pool.restarts == 1 and pool.workers[0].alive, timeout=20)
        assert any("did not answer" in r.getMessage() for r in caplog.records)
        assert pool.workers[0].pid != hung and not _alive(hung)
        assert call.media_state("client") == "lost"
    finally:
        await therapist.close()
        await client.close()
        await call.close()
        await pool.close()


def _raw_frame(body: bytes) -> bytes:
    """A frame as any sender could build it, bypassing ``wire.encode``'s type check."""
    return struct.pack("!I", len(body)) + body


# Two bad frames every protocol version can be sent: bytes that are no pickle at all, and a
# pickle of something that is not a message (here the old tuple protocol's ``state`` event).
BAD_FRAMES = (
    _raw_frame(b"\x80\x05garbage that is not a pickle"),
    _raw_frame(pickle.dumps(("state", "no-such-call", "client", "connected"))),
)


async def test_bad_frames_from_a_worker_are_logged_and_the_worker_kept(
    pool: MediaWorkerPool, caplog: pytest.LogCaptureFixture
) -> None:
    worker = pool.workers[0]
    pid = worker.pid
    assert worker.writer is not None
    # The pool's end of the socket, handed bytes exactly as if the worker had written them.
    protocol = worker.writer.transport.get_protocol()
    with caplog.at_level(logging.ERROR, logger="rapport.media.workers.pool"):
        for frame in BAD_FRAMES:
            protocol.data_received(frame)  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        health = {h["index"]: h for h in await pool.health()}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("worker 0 sent a bad frame" in e and "undecodable" in e for e in errors), errors
    assert any("unknown message type tuple" in e for e in errors), errors
    # Neither frame cost the worker: same process, still answering, nothing restarted.
    assert worker.alive and pool.workers[0] is worker and health[0]["alive"]
    assert health[0]["pid"] == pid and pool.restarts == 0
    call = pool.call("s-after-bad-frames")
    browser = FakeBrowser()
    try:
        await _join(call, "therapist", browser)
        assert call.peer_count == 1
    finally:
        await browser.close()
        await call.close()


async def test_bad_frames_to_a_worker_are_logged_and_the_worker_serves_on(
    pool: MediaWorkerPool, caplog: pytest.LogCaptureFixture
) -> None:
    worker = pool.workers[1]
    pid = worker.pid
    assert worker.writer is not None
    with caplog.at_level(logging.ERROR):
        for frame in (*BAD_FRAMES, wire.encode(Ready(1))):  # Ready is the worker's to send
            worker.writer.write(frame)
        await eventually(
            lambda: sum("[media worker 1]" in r.getMessage() for r in caplog.records) >= 3
        )
        health = {h["index"]: h for h in await pool.health()}
    errors = [r.getMessage() for r in caplog.records if "[media worker 1]" in r.getMessage()]
    assert any("dropped a frame from the server: undecodable" in e for e in errors), errors
    assert any("unknown message type tuple" in e for e in errors), errors
    assert any("ignored a Ready from the server: not a request" in e for e in errors), errors
    assert worker.alive and health[1]["alive"] and health[1]["pid"] == pid
    assert pool.restarts == 0

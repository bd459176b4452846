"""The media worker protocol without processes: messages, framing, and both ends' dispatch.

``tests/test_workers.py`` runs real worker processes; these tests pin the message layer on its
own so a protocol mistake fails here, fast and by name, rather than as a hung call there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import struct
from typing import Any

import pytest
from aiortc import RTCStatsReport

from media.relay.call import MediaUnavailable, PeerReport
from media.relay.ice import MediaConfig
from media.relay.sdp import SdpError
from media.workers import messages as m
from media.workers import wire
from media.workers.pool import _Worker
from media.workers.worker import WorkerServer

SAMPLES: list[Any] = [
    m.Init(MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",)), "info"),
    m.Connect("s#1", "client", "v=0\r\n", want_audio=True, request_id=7),
    m.Disconnect("s#1", "therapist", request_id=8),
    m.Close("s#1", request_id=9),
    m.GetReports("s#1", request_id=10),
    m.GetStats("s#1", request_id=11),
    m.Ping(request_id=12),
    m.GetHealth(reset_lag=True, request_id=13),
    m.Ok(7, m.Answer("v=0\r\n", {"therapist->client": "forward"}, 1)),
    m.Ok(8, m.Left(found=True, relay_mode={"client->therapist": "transcode"}, peer_count=0)),
    m.Ok(9, m.Closed()),
    m.Ok(10, m.PeerReports((PeerReport("client", "connected", RTCStatsReport()),))),
    m.Ok(11, m.RelayStats({"relay_mode": {}, "peers": {"client": {"forwarded": 3}}})),
    m.Ok(12, m.Pong(4242)),
    m.Ok(13, m.WorkerHealth(4242, 1, 2, 0.5, 0.25, None, 0)),
    m.Failed(7, m.ErrorKind.SDP, "no audio section"),
    m.Failed(7, m.ErrorKind.MEDIA_UNAVAILABLE, "closing"),
    m.Failed(7, m.ErrorKind.BAD_REQUEST, "unknown request Frobnicate"),
    m.Failed(7, m.ErrorKind.INTERNAL, "KeyError"),
    m.Ready(4242),
    m.MediaStateChanged("s#1", "client", "lost"),
    m.AudioBatch((("s#1", "client", b"\x01\x00" * 960), ("s#2", "therapist", b""))),
    m.LogEntry("rapport.x", logging.WARNING, "WARNING", "hello", 1.5, None),
]


def _frame(obj: object) -> bytes:
    """A frame built by hand, as any sender could: ``wire.encode`` refuses non-messages."""
    body = pickle.dumps(obj)
    return struct.pack("!I", len(body)) + body


def _reader(*frames: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for frame in frames:
        reader.feed_data(frame)
    reader.feed_eof()
    return reader


def test_samples_cover_every_message_and_every_error_kind() -> None:
    assert {type(s) for s in SAMPLES} == set(m.MESSAGES)
    assert {s.kind for s in SAMPLES if isinstance(s, m.Failed)} == set(m.ErrorKind)
    # A request class left out of REQUESTS would type-check and then be refused by the wire.
    # (By name: ``slots=True`` builds a second class, and the first may linger as a subclass.)
    ours = {c.__qualname__ for c in m.Request.__subclasses__() if c.__module__ == m.__name__}
    assert ours == {c.__qualname__ for c in m.REQUESTS}
    for request in m.REQUESTS:
        assert request.reply in m.P.__constraints__


def test_messages_are_frozen_and_slotted() -> None:
    for sample in SAMPLES:
        assert not hasattr(sample, "__dict__"), type(sample)
        field = dataclasses.fields(sample)[0].name if dataclasses.fields(sample) else None
        if field is not None:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(sample, field, None)


async def test_every_message_round_trips_through_the_wire() -> None:
    reader = _reader(*(wire.encode(s) for s in SAMPLES))
    for sample in SAMPLES:
        assert await wire.read(reader) == sample
    with pytest.raises(asyncio.IncompleteReadError):
        await wire.read(reader)


def test_only_messages_can_be_sent() -> None:
    for not_a_message in (("ok", 1, None), {"kind": "ready"}, None, m.Answer("", {}, 0)):
        with pytest.raises(TypeError, match="not a media worker message"):
            wire.encode(not_a_message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (struct.pack("!I", 5) + b"\x80\x05garbage"[:5], "undecodable frame of 5 bytes"),
        (struct.pack("!I", 3) + b"\x00\x01\x02", "undecodable frame"),
        (_frame(("ok", 1, None)), "unknown message type tuple"),  # the old tuple protocol
        (_frame({"kind": "ready"}), "unknown message type dict"),
        (_frame(m.Answer("", {}, 0)), "unknown message type Answer"),  # a payload, bare
    ],
    ids=["truncated-pickle", "not-pickle", "old-tuple", "dict", "bare-payload"],
)
async def test_a_bad_frame_is_rejected_and_the_next_one_still_read(frame: bytes, why: str) -> None:
    reader = _reader(frame, wire.encode(m.Ready(1)))
    with pytest.raises(wire.BadMessage, match=why):
        await wire.read(reader)
    assert await wire.read(reader) == m.Ready(1)


async def test_an_impossible_length_is_fatal_not_skippable() -> None:
    reader = _reader(struct.pack("!I", wire.MAX_MESSAGE_BYTES + 1), wire.encode(m.Ready(1)))
    with pytest.raises(wire.WireError, match="limit") as caught:
        await wire.read(reader)
    assert not isinstance(caught.value, wire.BadMessage)


# --------------------------------------------------------------------------- pool side


class _Pool:
    """Just what ``_Worker`` calls on its pool when its reader ends."""

    def __init__(self) -> None:
        self.exited: list[int] = []

    def worker_exited(self, worker: _Worker, code: int | None, calls: int) -> None:
        self.exited.append(worker.index)


class _Writer:
    """Collects what the pool sends, decoded."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def write(self, data: bytes) -> None:
        self.sent.append(wire.decode(data[4:]))

    def close(self) -> None:
        pass


async def _live_worker() -> tuple[_Worker, _Pool, _Writer]:
    pool = _Pool()
    worker = _Worker(pool, 3)  # type: ignore[arg-type]
    writer = _Writer()
    worker.writer = writer  # type: ignore[assignment]
    worker.alive = True
    worker.ready.set_result(None)
    return worker, pool, writer


async def test_pool_reader_skips_bad_frames_and_still_answers_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, pool, writer = await _live_worker()
    ping = asyncio.ensure_future(worker.request(m.Ping()))
    await asyncio.sleep(0)
    [sent] = writer.sent
    assert isinstance(sent, m.Ping) and sent.request_id > 0
    reader = _reader(
        b"\x00\x00\x00\x04junk",
        _frame(("ok", sent.request_id, 4242)),  # right id, old shape: must not answer it
        wire.encode(m.Connect("s", "client", "v=0", want_audio=False)),  # wrong direction
        wire.encode(m.AudioBatch((("s", "client"),))),  # type: ignore[arg-type]  # malformed
        wire.encode(m.Ok(sent.request_id, m.Pong(4242))),
    )
    with caplog.at_level(logging.ERROR, logger="rapport.media.workers.pool"):
        await worker._read(reader)
    assert await ping == m.Pong(4242)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("worker 3 sent a bad frame" in e and "undecodable" in e for e in errors)
    assert any("unknown message type tuple" in e for e in errors)
    assert any("sent a Connect, which only the server sends" in e for e in errors)
    assert any("worker 3: handling its AudioBatch failed" in e for e in errors)
    assert pool.exited == [3]  # only because the stream then ended


async def test_pool_maps_each_failure_kind_to_its_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, _, writer = await _live_worker()
    expected: list[tuple[m.Ok | m.Failed, type[Exception], str]] = []
    tasks: list[asyncio.Future[m.Payload]] = []
    for kind, exc, text in [
        (m.ErrorKind.SDP, SdpError, "no audio section"),
        (m.ErrorKind.MEDIA_UNAVAILABLE, MediaUnavailable, "worker 3: closing"),
        (m.ErrorKind.BAD_REQUEST, RuntimeError, "unknown request"),
        (m.ErrorKind.INTERNAL, RuntimeError, "media worker error: KeyError"),
    ]:
        tasks.append(asyncio.ensure_future(worker.request(m.Close("s"))))
        await asyncio.sleep(0)
        detail = text.removeprefix("worker 3: ").removeprefix("media worker error: ")
        expected.append((m.Failed(writer.sent[-1].request_id, kind, detail), exc, text))
    # A payload of the wrong class for the request is a failure too, not a silent success.
    tasks.append(asyncio.ensure_future(worker.request(m.Ping())))
    await asyncio.sleep(0)
    wrong = m.Ok(writer.sent[-1].request_id, m.Closed())
    expected.append((wrong, RuntimeError, "bad answer"))
    with caplog.at_level(logging.ERROR, logger="rapport.media.workers.pool"):
        await worker._read(_reader(*(wire.encode(reply) for reply, _, _ in expected)))
    for task, (_, exc, text) in zip(tasks, expected, strict=True):
        with pytest.raises(exc, match=text):
            await task
    errors = [r.getMessage() for r in caplog.records]
    assert any("refused Close: unknown request" in e for e in errors)
    assert any("answered Ping with Closed" in e for e in errors)


async def test_pool_reemits_worker_logs_with_the_worker_index(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, _, _ = await _live_worker()
    entry = m.LogEntry("rapport.media.relay.call", logging.WARNING, "WARNING", "hi", 1.0, None)
    with caplog.at_level(logging.INFO):
        await worker._read(_reader(wire.encode(entry)))
    [record] = [r for r in caplog.records if r.name == "rapport.media.relay.call"]
    assert record.getMessage() == "[media worker 3] hi" and record.levelno == logging.WARNING


# --------------------------------------------------------------------------- worker side


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0


class _WorkerWriter(_Writer):
    transport = _Transport()

    def is_closing(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True, slots=True)
class _Frobnicate(m.Request[m.Pong]):
    """A request class the worker has no case for (made here, never sent on a wire)."""


async def test_worker_answers_each_request_by_type() -> None:
    writer = _WorkerWriter()
    server = WorkerServer(asyncio.StreamReader(), writer)  # type: ignore[arg-type]
    for request in (
        m.Ping(request_id=1),
        m.GetHealth(request_id=2),
        m.GetStats("nope", request_id=3),
        m.GetReports("nope", request_id=4),
        m.Disconnect("nope", "client", request_id=5),
        m.Close("nope", request_id=6),
        _Frobnicate(request_id=7),
    ):
        await server._handle(request)
    replies = {r.request_id: r for r in writer.sent}
    assert replies[1] == m.Ok(1, m.Pong(os.getpid()))
    health = replies[2].payload
    assert isinstance(health, m.WorkerHealth) and health.calls == 0 and health.pid == os.getpid()
    assert replies[3] == m.Ok(3, m.RelayStats({}))
    assert replies[4] == m.Ok(4, m.PeerReports(()))
    assert replies[5] == m.Ok(5, m.Left(found=False, relay_mode={}, peer_count=0))
    assert replies[6] == m.Ok(6, m.Closed())
    assert replies[7] == m.Failed(7, m.ErrorKind.BAD_REQUEST, "unknown request _Frobnicate")


async def test_worker_reports_a_bad_offer_as_an_sdp_failure() -> None:
    writer = _WorkerWriter()
    server = WorkerServer(asyncio.StreamReader(), writer)  # type: ignore[arg-type]
    try:
        await server._handle(m.Connect("s#1", "client", "v=0\r\nnot sdp", False, request_id=1))
    finally:
        for call in server.calls.values():
            await call.close()
    [reply] = [r for r in writer.sent if isinstance(r, m.Ok | m.Failed)]
    assert isinstance(reply, m.Failed) and reply.kind is m.ErrorKind.SDP and reply.request_id == 1

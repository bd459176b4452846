"""A media worker process: the calls of the sessions pinned to it, on its own core.

Python runs one thread of bytecode at a time, and relaying media is mostly Python per packet,
so a single server process tops out at one core. ``media.workers.pool.MediaWorkerPool``
starts one of these per core (``python -m media.workers.worker --fd N``, N being its end of a
socketpair) and pins each session's call to one of them; the server process keeps
signalling, the database and the signal engine.

The worker hosts ordinary ``media.relay.call.Call`` objects and answers the pool's requests
(``media.workers.messages``: connect, disconnect, close, stats, reports, ping, health), each
with ``Ok`` or a ``Failed`` whose kind tells a bad offer from a bug. It pushes three kinds of
events besides ``Ready``: a participant's media state, their decoded audio as 48 kHz mono
int16 (only when the server asked for it, for the alliance signals; batched per event-loop
iteration), and log records, so the server's log stays the one stream with one format.
Audio is dropped, and counted, rather than queued without bound when the server falls
behind. The worker exits when its socket closes: a server that dies, even by SIGKILL,
leaves no orphan holding media ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any

from av import AudioFrame

from media.alliance.live import MonoPcm
from media.loops import LoopLagSampler, use_uvloop
from media.participants import MediaState
from media.relay.call import AudioInput, Call, MediaUnavailable, prepare_process
from media.relay.ice import MediaConfig, restrict_host_addresses
from media.relay.sdp import SdpError

from . import wire
from .messages import (
    Answer,
    AudioBatch,
    Close,
    Closed,
    Connect,
    Disconnect,
    ErrorKind,
    Failed,
    FromWorker,
    GetHealth,
    GetReports,
    GetStats,
    Init,
    Left,
    LogEntry,
    MediaStateChanged,
    Ok,
    Payload,
    PcmChunk,
    PeerReports,
    Ping,
    Pong,
    Ready,
    RelayStats,
    Request,
    WorkerHealth,
)

log = logging.getLogger("rapport.media.workers.worker")

MAX_AUDIO_BACKLOG_BYTES = 512 * 1024  # ~2.5 s of one participant's audio; then drop
LAG_SAMPLE_S = 0.05


class _LogForwarder(logging.Handler):
    """Sends each log record to the server, which re-emits it through its own handlers."""

    def __init__(self, worker: WorkerServer) -> None:
        super().__init__()
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.worker.send(
                LogEntry(
                    name=record.name,
                    levelno=record.levelno,
                    levelname=record.levelname,
                    msg=record.getMessage(),
                    created=record.created,
                    exc_text=self.format(record) if record.exc_info else None,
                )
            )
        except Exception:  # logging must never take the media down
            self.handleError(record)


class _BadRequest(Exception):
    """A request class this worker has no handler for: the two ends' code disagrees."""


class WorkerServer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.config = MediaConfig()
        self.calls: dict[str, Call] = {}
        self._pcm: dict[tuple[str, str], MonoPcm] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.audio_dropped = 0
        self._audio_batch: list[PcmChunk] = []
        self._lag = LoopLagSampler(LAG_SAMPLE_S, keep=1200)
        self._cpu_last = (time.monotonic(), time.process_time())

    # ------------------------------------------------------------------ outbound
    def send(self, message: FromWorker, *, droppable: bool = False) -> bool:
        if self.writer.is_closing():
            return False
        transport = self.writer.transport
        if droppable and transport.get_write_buffer_size() > MAX_AUDIO_BACKLOG_BYTES:
            self.audio_dropped += 1
            return False
        self.writer.write(wire.encode(message))
        return True

    def _audio(self, call_id: str, role: str, frame: AudioInput) -> None:
        if isinstance(frame, AudioFrame):
            converter = self._pcm.get((call_id, role))
            if converter is None:  # not setdefault: no throw-away object per frame
                converter = self._pcm[(call_id, role)] = MonoPcm()
            pcm = converter.mono(frame)
        else:
            pcm = frame
        # Frames decoded together (the tap decodes every call's audio in one pass) travel
        # in one message: one pickle and one write per loop iteration, not per frame.
        if not self._audio_batch:
            asyncio.get_running_loop().call_soon(self._flush_audio)
        self._audio_batch.append((call_id, role, pcm.tobytes()))

    def _flush_audio(self) -> None:
        batch, self._audio_batch = self._audio_batch, []
        if batch and not self.send(AudioBatch(tuple(batch)), droppable=True):
            self.audio_dropped += len(batch) - 1  # send() counted the message once

    def _state(self, call_id: str, role: str, state: MediaState) -> None:
        self.send(MediaStateChanged(call_id, role, state))

    # ------------------------------------------------------------------ requests
    async def run(self) -> None:
        init = await wire.read(self.reader)
        if not isinstance(init, Init):
            raise wire.WireError(f"expected Init, got {type(init).__name__}")
        self.config = init.config
        self._configure_logging(init.log_level)
        restrict_host_addresses(init.config.media_addresses)
        try:
            # Media runs here: speed patches in, and forwarding checked before the first call.
            prepare_process(init.config)
        except Exception:
            log.critical("media worker cannot run this relay mode", exc_info=True)
            raise
        self._lag.start()
        self.send(Ready(os.getpid()))
        try:
            while True:
                try:
                    message = await wire.read(self.reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break  # the server is gone
                except wire.BadMessage as exc:
                    # One bad frame; the stream is still in step, and the calls here are fine.
                    log.error("media worker dropped a frame from the server: %s", exc)
                    continue
                except wire.WireError as exc:
                    # Framing lost: exit, so the server sees the socket close and replaces us.
                    log.error("media worker cannot read the server any more: %s", exc)
                    break
                match message:
                    case Request():
                        task = asyncio.ensure_future(self._handle(message))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    case _:
                        log.error(
                            "media worker ignored a %s from the server: not a request",
                            type(message).__name__,
                        )
        finally:
            await self._lag.stop()
            for call in list(self.calls.values()):
                with contextlib.suppress(Exception):
                    await call.close()
            self.calls.clear()

    def _configure_logging(self, level: str) -> None:
        root = logging.getLogger()
        root.handlers[:] = [_LogForwarder(self)]
        root.setLevel(level.upper())
        for noisy in ("aiortc", "aioice"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    async def _handle(self, request: Request[Any]) -> None:
        """Serves one request and answers it, whatever happens: the server's caller is waiting
        on exactly this id, and an exception lost here would leave it hanging until timeout."""
        name = type(request).__name__
        try:
            payload = await self._serve(request)
        except SdpError as exc:
            self.send(Failed(request.request_id, ErrorKind.SDP, str(exc)))
        except MediaUnavailable as exc:
            self.send(Failed(request.request_id, ErrorKind.MEDIA_UNAVAILABLE, str(exc)))
        except _BadRequest:
            log.error("media worker has no handler for %s", name)
            self.send(Failed(request.request_id, ErrorKind.BAD_REQUEST, f"unknown request {name}"))
        except Exception as exc:
            log.exception("media worker request %s failed", name)
            self.send(Failed(request.request_id, ErrorKind.INTERNAL, type(exc).__name__))
        else:
            self.send(Ok(request.request_id, payload))

    async def _serve(self, request: Request[Any]) -> Payload:
        match request:
            case Connect():
                return await self._connect(request)
            case Disconnect():
                return await self._disconnect(request)
            case Close():
                return await self._close(request)
            case GetReports():
                call = self.calls.get(request.call_id)
                return PeerReports(() if call is None else tuple(await call.peer_reports()))
            case GetStats():
                call = self.calls.get(request.call_id)
                return RelayStats({} if call is None else await call.relay_stats())
            case Ping():
                return Pong(os.getpid())
            case GetHealth():
                return self._health(request.reset_lag)
            case _:
                raise _BadRequest(type(request).__name__)

    def _call(self, call_id: str, want_audio: bool) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            call = Call(
                self.config,
                on_audio=(lambda role, frame: self._audio(call_id, role, frame))
                if want_audio
                else None,
                on_media_state=lambda role, state: self._state(call_id, role, state),
            )
            self.calls[call_id] = call
        return call

    async def _connect(self, request: Connect) -> Answer:
        call = self._call(request.call_id, request.want_audio)
        answer = await call.connect(request.role, request.sdp)
        return Answer(answer, dict(call.relay_mode), call.peer_count)

    async def _disconnect(self, request: Disconnect) -> Left:
        call = self.calls.get(request.call_id)
        if call is None:
            return Left(found=False, relay_mode={}, peer_count=0)
        await call.disconnect(request.role)
        self._pcm.pop((request.call_id, request.role), None)
        return Left(found=True, relay_mode=dict(call.relay_mode), peer_count=call.peer_count)

    async def _close(self, request: Close) -> Closed:
        call = self.calls.pop(request.call_id, None)
        for key in [k for k in self._pcm if k[0] == request.call_id]:
            del self._pcm[key]
        if call is not None:
            await call.close()
        return Closed()

    def _health(self, reset_lag: bool) -> WorkerHealth:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_last
        self._cpu_last = (now, cpu)
        p99 = self._lag.p99_ms() if self._lag.samples else None
        if reset_lag:
            self._lag.samples.clear()
        return WorkerHealth(
            pid=os.getpid(),
            calls=len(self.calls),
            peers=sum(c.peer_count for c in self.calls.values()),
            cpu_seconds=round(cpu, 3),
            cpu_fraction=round((cpu - cpu_then) / (now - then), 3) if now > then else 0.0,
            loop_lag_p99_ms=p99,
            audio_dropped=self.audio_dropped,
            tasks=len(asyncio.all_tasks()),
        )


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        await WorkerServer(reader, writer).run()
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m media.workers.worker")
    parser.add_argument("--fd", type=int, required=True, help="this worker's end of a socketpair")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: let the server close its calls in order and
    # then close our socket, which is what ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_uvloop()
    asyncio.run(serve(args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Media worker processes, seen from the server: the pool and the calls that live in them.

``MediaWorkerPool`` starts N ``media.workers.worker`` processes (one per core by default) and gives
each new call to the worker with the fewest calls; the call stays pinned there. A
``RemoteCall`` looks to the room exactly like an in-process ``media.relay.call.Call``
(``CallHandle``): connect returns the SDP answer, media states and decoded audio arrive as
callbacks on the server's event loop.

When a worker dies, the pool puts a replacement in its slot at once and starts it; its calls
report their media as lost and call ``on_worker_lost``, so the room tells both browsers to
re-offer now (rather than after their own ICE checks time out), and a call's next connect
goes to a live worker (or waits for the replacement to be ready). A connect that was in
flight when its worker died is retried once on another, so a participant normally never
sees the crash as an error. A pool may keep a spare (by default when it has one worker): an
idle worker, already started, that takes the dead one's slot instead, so the re-offers do not
wait for a replacement's imports; a new spare then starts in the background.

The two ends speak ``media.workers.messages``: typed requests with ids, replies that echo
them, and events. A frame that is not one of those messages is logged and skipped, never
a reason to drop a worker: its calls are fine, and dropping it would cost them their media.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from media.participants import ROLES, MediaState
from media.relay.call import (
    AudioSink,
    MediaStateSink,
    MediaUnavailable,
    PeerReport,
    RelayMode,
    WorkerLostSink,
    initial_relay_modes,
)
from media.relay.ice import MediaConfig
from media.relay.sdp import SdpError

from . import wire
from .messages import (
    AudioBatch,
    Close,
    Connect,
    Disconnect,
    ErrorKind,
    Failed,
    GetHealth,
    GetReports,
    GetStats,
    Init,
    LogEntry,
    MediaStateChanged,
    Message,
    Ok,
    P,
    Payload,
    Ping,
    Ready,
    Request,
)

log = logging.getLogger("rapport.media.workers.pool")

REQUEST_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
RESPAWN_BACKOFF_S = 1.0
WATCH_EVERY_S = 5.0  # how often each worker is pinged
HUNG_AFTER_S = 15.0  # a worker that does not answer a ping this long is killed and replaced
SPARE_INDEX = -1  # the spare's index until it takes a dead worker's slot
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class _Worker:
    """One worker process and the socket to it."""

    def __init__(self, pool: MediaWorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = False
        self.calls: dict[str, RemoteCall] = {}
        # request id -> (the caller's future, the request class, which names the payload)
        self._pending: dict[int, tuple[asyncio.Future[Payload], type[Request[Any]]]] = {}
        self._ids = itertools.count(1)
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def is_ready(self) -> bool:
        """Started and serving (its ``Ready`` arrived), as opposed to alive but importing."""
        return (
            self.alive
            and self.ready.done()
            and not self.ready.cancelled()
            and self.ready.exception() is None
        )

    async def start(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "media.workers.worker",
                "--fd",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, self.writer = await asyncio.open_connection(sock=parent)
        self.writer.write(wire.encode(Init(self.pool.config, self.pool.log_level)))
        self.alive = True
        self._reader_task = asyncio.ensure_future(self._read(reader))
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), START_TIMEOUT_S)
        except TimeoutError:
            # Never ready: kill it, so its end of the socket closes and everyone waiting on
            # ``ready`` hears MediaUnavailable instead of waiting forever.
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            raise

    async def request(self, request: Request[P], *, within: float = REQUEST_TIMEOUT_S) -> P:
        """Sends ``request`` under a fresh id and returns the worker's payload for it.

        Raises ``SdpError``, ``MediaUnavailable`` (worker dead, or no answer ``within``
        seconds) or ``RuntimeError``, as ``Failed.kind`` and the worker's fate say.
        """
        await asyncio.shield(self.ready)
        if not self.alive or self.writer is None:
            raise MediaUnavailable(f"media worker {self.index} is not running")
        request = replace(request, request_id=next(self._ids))
        future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = (future, type(request))
        try:
            self.writer.write(wire.encode(request))
            payload = await asyncio.wait_for(asyncio.shield(future), within)
        except TimeoutError as exc:
            name = type(request).__name__
            raise MediaUnavailable(f"media worker {self.index} did not answer {name}") from exc
        finally:
            self._pending.pop(request.request_id, None)
        # _reply checked the payload against ``request.reply``, which is ``P`` at runtime.
        return cast(P, payload)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Reads until the worker is gone. A bad frame, or a message that fails in handling,
        is logged and skipped: the worker and every call on it are still fine, and dropping
        the connection would cost them their media. Only broken framing ends the reading."""
        try:
            while True:
                try:
                    message = await wire.read(reader)
                except wire.BadMessage as exc:
                    log.error("media worker %d sent a bad frame, skipped: %s", self.index, exc)
                    continue
                try:
                    self._dispatch(message)
                except Exception:
                    log.exception(
                        "media worker %d: handling its %s failed",
                        self.index,
                        type(message).__name__,
                    )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except wire.WireError as exc:
            log.error("media worker %d broke the framing (%s); dropping it", self.index, exc)
        except Exception:
            log.exception("media worker %d sent something unreadable", self.index)
        finally:
            await self._gone()

    def _dispatch(self, message: Message) -> None:
        match message:
            case AudioBatch(chunks=chunks):
                for call_id, role, pcm in chunks:
                    call = self.calls.get(call_id)
                    if call is not None:
                        call.deliver_audio(role, np.frombuffer(pcm, dtype=np.int16))
            case MediaStateChanged(call_id=call_id, role=role, state=state):
                call = self.calls.get(call_id)
                if call is not None:
                    call.set_state(role, state)
            case Ok() | Failed():
                self._reply(message)
            case LogEntry():
                entry = asdict(message)
                entry["msg"] = f"[media worker {self.index}] {message.msg}"
                record = logging.makeLogRecord(entry)
                logging.getLogger(record.name).handle(record)
            case Ready(pid=pid):
                self.pid = pid
                if not self.ready.done():
                    self.ready.set_result(None)
            case _:
                log.error(
                    "media worker %d sent a %s, which only the server sends; ignored",
                    self.index,
                    type(message).__name__,
                )

    def _reply(self, reply: Ok | Failed) -> None:
        pending = self._pending.get(reply.request_id)
        if pending is None or pending[0].done():
            return  # its caller timed out and gave up: nobody is waiting
        future, sent = pending
        match reply:
            case Ok(payload=payload) if isinstance(payload, sent.reply):
                future.set_result(payload)
            case Ok(payload=payload):
                log.error(
                    "media worker %d answered %s with %s",
                    self.index,
                    sent.__name__,
                    type(payload).__name__,
                )
                future.set_exception(RuntimeError(f"media worker error: bad answer to {sent}"))
            case Failed(kind=ErrorKind.SDP, detail=detail):
                future.set_exception(SdpError(detail))
            case Failed(kind=ErrorKind.MEDIA_UNAVAILABLE, detail=detail):
                future.set_exception(MediaUnavailable(f"media worker {self.index}: {detail}"))
            case Failed(kind=kind, detail=detail):
                if kind is ErrorKind.BAD_REQUEST:
                    log.error("media worker %d refused %s: %s", self.index, sent.__name__, detail)
                future.set_exception(RuntimeError(f"media worker error: {detail}"))

    async def _gone(self) -> None:
        self.alive = False
        if self.writer is not None:
            self.writer.close()
        code = None
        if self.proc is not None:
            with contextlib.suppress(Exception):
                code = await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        error = MediaUnavailable(f"media worker {self.index} exited")
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody may be waiting
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        calls = list(self.calls.values())
        self.calls.clear()
        # The replacement first, so the participants' re-offers (prompted by worker_lost)
        # find it in the pool however fast they come back.
        self.pool.worker_exited(self, code, len(calls))
        detail = f"media worker {self.index} (pid {self.pid}) exited with code {code}"
        for call in calls:
            call.worker_lost(detail)

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader_task is not None:
            with contextlib.suppress(BaseException):
                await self._reader_task


class MediaWorkerPool:
    def __init__(
        self,
        config: MediaConfig,
        size: int,
        *,
        log_level: str = "info",
        watch_every_s: float = WATCH_EVERY_S,
        hung_after_s: float = HUNG_AFTER_S,
        spare: bool | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        self.config = config
        self.size = size
        # A started, idle worker that takes a dead one's slot at once. With two or more
        # workers a crashed call moves to another running one; with one, its calls used to
        # wait ~2 s (more on a busy machine) for the replacement's imports. None: only then.
        self.keep_spare = size == 1 if spare is None else spare
        self.spare: _Worker | None = None
        self.log_level = log_level
        self.watch_every_s = watch_every_s
        self.hung_after_s = hung_after_s
        self.workers: list[_Worker] = []
        self.restarts = 0
        self.closing = False
        self._respawning: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every worker in parallel; returns once all are ready."""
        self.workers = [_Worker(self, i) for i in range(self.size)]
        await asyncio.gather(*(w.start() for w in self.workers))
        log.info(
            "media workers ready: %s", ", ".join(f"{w.index}=pid {w.pid}" for w in self.workers)
        )
        self._watchdog = asyncio.ensure_future(self._watch())
        self._start_spare()  # after the workers, so it never slows the server's start

    def _start_spare(self, delay_s: float = 0.0) -> None:
        if not self.keep_spare or self.closing:
            return
        task = asyncio.ensure_future(self._run_spare(delay_s))
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _run_spare(self, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        if self.closing or self.spare is not None:
            return
        spare = self.spare = _Worker(self, SPARE_INDEX)
        try:
            await spare.start()
        except Exception:
            log.exception("the spare media worker could not be started")
            return
        log.info("spare media worker ready: pid %s", spare.pid)

    async def _watch(self) -> None:
        """Kill a worker that stops answering, so it is replaced like one that crashed.

        A worker stuck in a loop or a deadlock would otherwise hold its calls frozen (media
        stops, yet nothing reports it dead) until every participant gave up.
        """
        while not self.closing:
            await asyncio.sleep(self.watch_every_s)
            spare = [self.spare] if self.spare is not None else []
            await asyncio.gather(*(self._check(w) for w in [*self.workers, *spare]))

    async def _check(self, worker: _Worker) -> None:
        if not worker.alive or not worker.ready.done():
            return
        try:
            await worker.request(Ping(), within=self.hung_after_s)
        except MediaUnavailable:
            if worker.alive and not self.closing and worker.proc is not None:
                log.error(
                    "media worker %d (pid %s) did not answer for %.0f s; killing it",
                    worker.index,
                    worker.pid,
                    self.hung_after_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()

    def call(
        self,
        session_id: str,
        on_audio: AudioSink | None = None,
        on_media_state: MediaStateSink | None = None,
    ) -> RemoteCall:
        return RemoteCall(self, session_id, on_audio, on_media_state)

    def pick(self) -> _Worker:
        """The ready worker with the fewest calls; one still starting only when none is ready
        (a dead one only when none is alive).

        A replacement counts as alive from its spawn, but needs about 2 s of imports before it
        serves: a call re-pinned after a crash onto it waited that long for its media (3.3 s
        from `restart_media` to video in the browser test) while another worker stood idle.
        """
        if not self.workers:
            raise MediaUnavailable("media workers are not started")
        live = [w for w in self.workers if w.alive]
        ready = [w for w in live if w.is_ready]
        return min(ready or live or self.workers, key=lambda w: (len(w.calls), w.index))

    def worker_exited(self, worker: _Worker, code: int | None, calls: int) -> None:
        if self.closing:
            return
        if worker is self.spare:
            log.error("the spare media worker (pid %s) exited with code %s", worker.pid, code)
            self.spare = None
            self._start_spare(RESPAWN_BACKOFF_S)
            return
        log.error(
            "media worker %d (pid %s) exited with code %s; %d call(s) lost their media; "
            "starting a replacement",
            worker.index,
            worker.pid,
            code,
            calls,
        )
        died_starting = not worker.ready.done() or worker.ready.exception() is not None
        replacement: _Worker | None = None
        spare = self.spare
        if (
            not died_starting
            and self.workers[worker.index] is worker
            and spare is not None
            and spare.is_ready
        ):
            # The spare is serving already: calls re-pinned from now on go straight to it.
            self.spare = None
            spare.index = worker.index
            self.workers[worker.index] = spare
            self.restarts += 1
            log.info("spare media worker (pid %s) took slot %d", spare.pid, worker.index)
            self._start_spare()
            return
        if not died_starting and self.workers[worker.index] is worker:
            # In place at once (started by the task below): calls re-pinned from now on wait
            # for it to be ready instead of finding no live worker.
            replacement = _Worker(self, worker.index)
            self.workers[worker.index] = replacement
            self.restarts += 1
        task = asyncio.ensure_future(self._respawn(worker, replacement))
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _respawn(self, dead: _Worker, replacement: _Worker | None = None) -> None:
        if replacement is None:
            await asyncio.sleep(RESPAWN_BACKOFF_S)  # it died starting: do not spin
            if self.closing or self.workers[dead.index] is not dead:
                return
            replacement = _Worker(self, dead.index)
            self.workers[dead.index] = replacement
            self.restarts += 1
        try:
            await replacement.start()
        except Exception:
            log.exception("media worker %d could not be restarted", dead.index)

    async def health(self, reset_lag: bool = False) -> list[dict[str, Any]]:
        out = []
        for worker in list(self.workers):
            entry: dict[str, Any] = {"index": worker.index, "pid": worker.pid}
            try:
                entry.update(asdict(await worker.request(GetHealth(reset_lag), within=5.0)))
                entry["alive"] = True
            except Exception:
                entry["alive"] = False
            out.append(entry)
        return out

    async def close(self) -> None:
        self.closing = True
        for task in [*self._respawning, *([self._watchdog] if self._watchdog else [])]:
            task.cancel()
        spare = [self.spare] if self.spare is not None else []
        await asyncio.gather(*(w.stop() for w in [*self.workers, *spare]), return_exceptions=True)


class RemoteCall:
    """A call whose peers live in a media worker process (see ``media.relay.call.CallHandle``)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        pool: MediaWorkerPool,
        session_id: str,
        on_audio: AudioSink | None,
        on_media_state: MediaStateSink | None,
    ) -> None:
        self.pool = pool
        # Unique per room: a session's next room must not collide with the closing one.
        self.id = f"{session_id}#{next(self._ids)}"
        self._on_audio = on_audio
        self._on_media_state = on_media_state
        self.on_worker_lost: WorkerLostSink | None = None
        self.relay_mode: dict[str, RelayMode] = initial_relay_modes(pool.config)
        self._states: dict[str, MediaState] = {}
        self._peers = 0
        self.closed = False
        self.worker = pool.pick()
        self.worker.calls[self.id] = self

    @property
    def worker_index(self) -> int:
        return self.worker.index

    def _live_worker(self) -> _Worker:
        if not self.worker.alive and self.worker.ready.done():
            self.worker.calls.pop(self.id, None)
            self.worker = self.pool.pick()  # re-pinned: this call has no peers anywhere now
            self.worker.calls[self.id] = self
        return self.worker

    async def connect(self, role: str, offer_sdp: str) -> str:
        if role not in ROLES:
            raise ValueError(role)
        for attempt in range(2):
            worker = self._live_worker()
            try:
                answer = await worker.request(
                    Connect(self.id, role, offer_sdp, want_audio=self._on_audio is not None)
                )
            except MediaUnavailable:
                if attempt:
                    raise
                await asyncio.sleep(0)  # let the pool notice the death and pick again
                continue
            self.relay_mode, self._peers = answer.relay_mode, answer.peer_count
            return answer.sdp
        raise MediaUnavailable("no media worker answered")  # pragma: no cover

    async def disconnect(self, role: str) -> None:
        if self.worker.alive:
            with contextlib.suppress(MediaUnavailable):
                left = await self.worker.request(Disconnect(self.id, role))
                if left.found:
                    self.relay_mode, self._peers = left.relay_mode, left.peer_count
        self.set_state(role, "none")

    async def close(self) -> None:
        self.closed = True
        if self.worker.alive:
            with contextlib.suppress(MediaUnavailable):
                await self.worker.request(Close(self.id))
        self.worker.calls.pop(self.id, None)
        self._peers = 0

    def media_state(self, role: str) -> MediaState:
        return self._states.get(role, "none")

    @property
    def peer_count(self) -> int:
        return self._peers

    async def peer_reports(self) -> list[PeerReport]:
        if not self._peers or not self.worker.alive:
            return []
        try:
            return list((await self.worker.request(GetReports(self.id), within=5.0)).reports)
        except MediaUnavailable:
            return []

    async def relay_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        if self.worker.alive:
            with contextlib.suppress(MediaUnavailable):
                stats = (await self.worker.request(GetStats(self.id), within=5.0)).stats
        return stats or {"relay_mode": dict(self.relay_mode), "peers": {}}

    # ------------------------------------------------------------------ from the worker
    def deliver_audio(self, role: str, pcm: np.ndarray) -> None:
        if self._on_audio is not None and not self.closed:
            self._on_audio(role, pcm)

    def set_state(self, role: str, state: MediaState) -> None:
        if self._states.get(role, "none") == state:
            return
        self._states[role] = state
        if self._on_media_state is not None and not self.closed:
            self._on_media_state(role, state)

    def worker_lost(self, detail: str = "media worker exited") -> None:
        self._peers = 0
        for role, state in list(self._states.items()):
            self.set_state(role, "lost" if state in ("connected", "lost") else "none")
        if self.on_worker_lost is not None and not self.closed:
            self.on_worker_lost(detail)

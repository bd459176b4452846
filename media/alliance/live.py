"""The live signal pipeline: decoded call audio in, speaking changes and snapshots out.

The call hands every decoded audio frame to ``LiveSignals.on_audio`` on the event loop; that
only downmixes and queues. One ``SignalThread`` thread per server runs voice activity and the
pure engine for every session on a 20 ms wall clock, so the event loop never does DSP. The
clock is the wall clock (not the audio): a participant whose audio stops still has their
time counted, as not speaking, and time with nobody present is not counted at all.

The thread wakes every ``tick_s`` (100 ms by default, ``RAPPORT_SIGNAL_TICK_MS``) and runs all
the 20 ms frames that fell due since, one by one: in place a wake-up costs more than the
frames it runs (cold caches after the sleep), so five frames a wake-up cost about half of
one frame a wake-up (docs/benchmarks.md), for up to 100 ms more on the speaking indicator.
What the engine sees does not depend on the wake-up period: each frame still consumes one
20 ms audio frame per role, queued audio is trimmed only beyond what the due frames and the
clock lag account for, and updates are published after the very frame that produced them,
so the snapshots are the ones a 20 ms wake-up would have sent (tests/test_signal_batching.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from av import AudioFrame
from av.audio.resampler import AudioResampler

from .engine import (
    EventKind,
    ParticipantAudio,
    Role,
    SessionClockEngine,
    SignalConfig,
    SignalEngine,
    SignalEvent,
    Snapshot,
)
from .payload import timeline_json
from .vad import VadTuning

log = logging.getLogger("rapport.signals")

SAMPLE_RATE = 48_000
SNAPSHOT_EVERY_S = 0.5
# Audio is consumed this far behind the wall clock so that a frame delivered a little late
# (network jitter, decoder thread) still lands on its own tick.
CLOCK_LAG_S = 0.06
# Decoded frames queued between two wake-ups (oldest dropped beyond it): half a second,
# enough for a 100 ms wake-up period and a thread held up for a few hundred milliseconds.
MAX_QUEUED_FRAMES = 25
# How far an absence may be dated back to the last audio that arrived: a stall is noticed
# after 3 s, so this covers it with room, yet a participant whose audio never arrived is not
# erased from minutes of the session.
MAX_BACKDATE_S = 10.0


@dataclass(frozen=True)
class SignalsUpdate:
    """What the worker publishes: the current speakers and, when due, a snapshot."""

    session_id: str
    speaking: tuple[Role, ...]
    speaking_changed: bool
    snapshot: Snapshot | None
    events: tuple[SignalEvent, ...]
    at_monotonic: float


class MonoPcm:
    """Turns any decoded audio frame into 48 kHz mono int16 samples."""

    def __init__(self) -> None:
        self._resampler: AudioResampler | None = None

    def mono(self, frame: AudioFrame) -> np.ndarray:
        if frame.sample_rate == SAMPLE_RATE and frame.format.name == "s16":
            channels = len(frame.layout.channels)
            data = frame.to_ndarray().reshape(-1, channels)
            if channels == 1:
                return data[:, 0]
            if channels == 2:  # Opus decodes to stereo: integer average, 3x cheaper than mean
                pair_sum = data[:, 0].astype(np.int32) + data[:, 1].astype(np.int32)
                return np.right_shift(pair_sum, 1).astype(np.int16)
            mean: np.ndarray = data.mean(axis=1)
            return mean.astype(np.int16)
        if self._resampler is None:
            self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


class _Downmixer(MonoPcm):
    """Cuts decoded audio (a frame, or mono samples already) into the engine's frame size."""

    def __init__(self, frame_samples: int) -> None:
        super().__init__()
        self.frame_samples = frame_samples
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, frame: AudioFrame | np.ndarray) -> list[np.ndarray]:
        mono = frame if isinstance(frame, np.ndarray) else self.mono(frame)
        if mono.size == self.frame_samples and not self._pending.size:
            return [mono.copy()]
        self._pending = np.concatenate([self._pending, mono])
        out = []
        while self._pending.size >= self.frame_samples:
            out.append(self._pending[: self.frame_samples].copy())
            self._pending = self._pending[self.frame_samples :]
        return out


# The engine's input per tick, one of nine states, run-length encoded: enough to rebuild the
# exact engine state after a server restart by replaying it (the engine is deterministic).
_STATE_CODE = {None: 0, False: 1, True: 2}
_CODE_STATE: dict[int, bool | None] = {0: None, 1: False, 2: True}


# A re-dated absence in the recorded input: [negative code naming the role, ticks back]. It
# is replayed as the same ``retract_presence`` call, so a restart reproduces it exactly.
_BACKDATE_CODE = {Role.THERAPIST: -1, Role.CLIENT: -2}
_BACKDATE_ROLE = {code: role for role, code in _BACKDATE_CODE.items()}
# Talk taken back (``ParticipantAudio.last_retractions``): per range, two entries with the
# role's code, [code, ticks back to its start] then [code, its length in ticks]; replayed as
# the same ``retract_talk`` call after the same tick.
_RETRACT_CODE = {Role.THERAPIST: -3, Role.CLIENT: -4}
_RETRACT_ROLE = {code: role for role, code in _RETRACT_CODE.items()}


def encode_tick(speech: dict[Role, bool | None]) -> int:
    return _STATE_CODE[speech[Role.THERAPIST]] * 3 + _STATE_CODE[speech[Role.CLIENT]]


def decode_tick(code: int) -> dict[Role, bool | None]:
    return {Role.THERAPIST: _CODE_STATE[code // 3], Role.CLIENT: _CODE_STATE[code % 3]}


class LiveSignals:
    """One session's signals. Lives as long as the session, across reconnects."""

    def __init__(
        self,
        session_id: str,
        config: SignalConfig | None = None,
        *,
        vad_tuning: VadTuning | None = None,
    ) -> None:
        self.session_id = session_id
        self.config = config or SignalConfig()
        self.engine: SignalEngine = SessionClockEngine(self.config)
        self.frame_s = self.config.frame_ms / 1000.0
        # Audio frames that may stay queued once the due frames ran: the clock lag's worth.
        # Beyond it a burst of late audio is dropped rather than delaying every later frame.
        self._keep_queued = round(CLOCK_LAG_S / self.frame_s)
        frame_samples = SAMPLE_RATE * self.config.frame_ms // 1000
        # The same VAD → engine glue the offline analyser uses.
        self._audio = ParticipantAudio(self.engine, sample_rate=SAMPLE_RATE, vad_tuning=vad_tuning)
        self._mix = {r: _Downmixer(frame_samples) for r in Role}
        self._queues: dict[Role, deque[AudioFrame | np.ndarray]] = {
            r: deque(maxlen=MAX_QUEUED_FRAMES) for r in Role
        }
        self._present = dict.fromkeys(Role, False)
        # Per role, the tick after the last one that consumed real audio (and when they
        # became present): where an absence really began.
        self._last_audio_tick: dict[Role, int | None] = dict.fromkeys(Role)
        self._present_tick: dict[Role, int] = dict.fromkeys(Role, 0)
        self.backdated_ticks = 0
        self._lock = threading.Lock()
        self._clock_base: float | None = None
        self._ticks = 0
        self._last_snapshot_tick = 0
        self._speaking: tuple[str, ...] = ()
        self.frames_dropped = 0
        #: CPU seconds the signal thread spent stepping this session (downmix, VAD, engine).
        self.cpu_s = 0.0
        self.ended = False
        self.latest: Snapshot | None = None
        self._runs: list[list[int]] = []  # [code, count], the engine's whole input
        #: Called (on the event loop) when someone becomes present: wakes an idle thread.
        self.on_active: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        """Whether stepping this session does anything (someone is present, not ended)."""
        return not self.ended and any(self._present.values())

    @classmethod
    def restore(
        cls, session_id: str, runs: list[list[int]], config: SignalConfig | None = None
    ) -> LiveSignals:
        """Rebuild a session's engine from its recorded input (after a server restart)."""
        signals = cls(session_id, config)
        retract_from: int | None = None
        for code, count in runs:
            if int(code) in _RETRACT_ROLE:
                engine = signals.engine
                if retract_from is None:
                    retract_from = engine.frames - int(count)
                else:
                    span = (retract_from, retract_from + int(count))
                    engine.retract_talk(_RETRACT_ROLE[int(code)], [span])
                    retract_from = None
                signals._runs.append([int(code), int(count)])
                continue
            if int(code) in _BACKDATE_ROLE:
                engine = signals.engine
                engine.retract_presence(_BACKDATE_ROLE[int(code)], engine.frames - int(count))
                signals._runs.append([int(code), int(count)])
                continue
            speech = decode_tick(int(code))
            for _ in range(int(count)):
                signals.engine.advance(speech)
            signals._runs.append([int(code), int(count)])
            signals._ticks += int(count)
        signals._last_snapshot_tick = signals._ticks
        if signals._ticks:
            signals.latest = signals.engine.snapshot()
        return signals

    def input_runs(self) -> list[list[int]]:
        with self._lock:
            return [list(run) for run in self._runs]

    def _record(self, speech: dict[Role, bool | None]) -> None:
        code = encode_tick(speech)
        if self._runs and self._runs[-1][0] == code:
            self._runs[-1][1] += 1
        else:
            self._runs.append([code, 1])

    # ---------------------------------------------------------------- event-loop side
    def on_audio(self, role: str, frame: AudioFrame | np.ndarray) -> None:
        """Called on the event loop for every decoded frame (or mono samples): only queue it.

        Downmixing and voice activity run on the worker thread, off the media path.
        """
        queue = self._queues[Role(role)]
        # No lock: deque append/popleft are atomic, so the loop never waits for the worker.
        if len(queue) == queue.maxlen:
            self.frames_dropped += 1
        queue.append(frame)

    def set_present(self, role: str, present: bool) -> None:
        """Presence as the room sees it. Going absent is dated back to the last audio that
        arrived (see ``_backdate``): the room learns of a stalled connection seconds late."""
        who = Role(role)
        with self._lock:
            if present and not self._present[who]:
                self._present_tick[who] = self._ticks
                self._last_audio_tick[who] = None
            elif not present and self._present[who]:
                self._backdate(who)
            self._present[who] = present
            self._audio.set_present(who, present)
            if not present:
                self._queues[who].clear()
            if not any(self._present.values()):
                self._clock_base = None  # nobody here: the session clock pauses
        if present and self.on_active is not None:
            self.on_active()

    def _backdate(self, role: Role) -> None:
        """The ticks since ``role``'s last audio become absence, in the engine (which turns
        their silence into absent time) and in the recorded input (so a restart replays the
        same correction at the same tick)."""
        last = self._last_audio_tick[role]
        since = self._present_tick[role] if last is None else last
        limit = round(MAX_BACKDATE_S / self.frame_s)
        since = max(since, self._ticks - limit, 0)
        count = self._ticks - since
        if count <= 0:
            return
        offset = self._ticks - self.engine.frames  # ticks before the session clock started
        self.engine.retract_presence(role, since - offset)
        self.backdated_ticks += count
        self._runs.append([_BACKDATE_CODE[role], count])

    def set_muted(self, role: str, muted: bool) -> None:
        with self._lock:
            self._audio.set_muted(Role(role), muted)

    # ---------------------------------------------------------------- worker side
    def step(self, now: float) -> list[SignalsUpdate]:
        """Advance the engine to ``now``, one frame at a time; return the updates with news.

        Each frame publishes exactly what it would have published had the thread woken up for
        it alone, so a longer wake-up period changes when updates leave, never what they say.
        """
        with self._lock:
            if self.ended:
                return []
            if not any(self._present.values()):
                return []  # nobody here: the clock paused when the last one left
            if self._clock_base is None:
                self._clock_base = now - self._ticks * self.frame_s
            target = int((now - self._clock_base - CLOCK_LAG_S) / self.frame_s)
            for role in Role:
                queue = self._queues[role]
                while queue:  # downmix and voice activity run here, on the worker thread
                    for chunk in self._mix[role].push(queue.popleft()):
                        self._audio.push(role, chunk)
            due = target - self._ticks
            if due <= 0:
                return []
            # Keep up with real time after a burst: what the due frames do not consume may
            # stay queued up to the clock lag. Trimming once for all due frames drops the same
            # frames as trimming before each frame with one wake-up per frame would.
            for role in Role:
                self.frames_dropped += self._audio.trim(role, keep=due + self._keep_queued)
            updates: list[SignalsUpdate] = []
            audio = self._audio
            last_audio = self._last_audio_tick
            for _ in range(due):
                events = audio.tick()
                self._record(audio.last_values)
                for role, spans in audio.last_retractions.items():
                    frames = self.engine.frames
                    for start, end in spans:
                        self._runs.append([_RETRACT_CODE[role], frames - start])
                        self._runs.append([_RETRACT_CODE[role], end - start])
                self._ticks += 1
                for role, had in audio.last_had_frame.items():
                    if had:
                        last_audio[role] = self._ticks
                update = self._publish(events, now, force=False)
                if update is not None:
                    updates.append(update)
            return updates

    def _publish(self, events: list[SignalEvent], now: float, force: bool) -> SignalsUpdate | None:
        changed = any(e.kind in (EventKind.SPEECH_START, EventKind.SPEECH_END) for e in events)
        due = (self._ticks - self._last_snapshot_tick) * self.frame_s >= SNAPSHOT_EVERY_S
        if not (changed or due or force or events):
            return None
        snapshot = self.engine.snapshot()
        self.latest = snapshot
        speaking = tuple(snapshot.speaking)
        speaking_changed = speaking != self._speaking
        self._speaking = speaking
        if due or force:
            self._last_snapshot_tick = self._ticks
        return SignalsUpdate(
            self.session_id,
            speaking,
            speaking_changed,
            snapshot if (due or force or speaking_changed) else None,
            tuple(events),
            now,
        )

    @property
    def cpu_per_session_second(self) -> float | None:
        """What this session's signals cost: CPU seconds per second of session covered.

        Divided by the engine's own clock rather than wall time, because that is the time the
        work was for (a paused clock costs next to nothing and is not a second of session).
        """
        seconds = self.engine.now_s
        return None if seconds <= 0 else self.cpu_s / seconds

    def snapshot(self) -> Snapshot:
        with self._lock:
            self.latest = self.engine.finalize() if self.ended else self.engine.snapshot()
            return self.latest

    def timeline(self) -> list[dict[str, Any]]:
        with self._lock:
            return timeline_json(self.engine.timeline())

    def finish(self) -> Snapshot:
        """End of session: close open segments; later audio is ignored."""
        with self._lock:
            if not self.ended:
                self.ended = True
                self.latest = self.engine.finalize()
            assert self.latest is not None
            return self.latest


Publisher = Callable[[SignalsUpdate], None]


class SignalThread:
    """One thread stepping every live session, all due 20 ms frames per wake-up.

    ``tick_s`` is the wake-up period (not the frame): longer batches more frames per wake-up
    (cheaper) and delays a speaking change by up to that much. With no session, or nobody
    present in any, the thread sleeps until someone joins instead of waking to find nothing.
    """

    def __init__(self, publish: Publisher, tick_s: float = 0.1) -> None:
        self._publish = publish
        self._tick_s = tick_s
        self._sessions: dict[str, LiveSignals] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.max_step_s = 0.0
        # Measured with the thread's own CPU clock, so the event loop, media workers and a
        # busy neighbour on the same machine are never billed to the signals.
        self.cpu_s = 0.0
        self.started_at: float | None = None
        #: Wake-ups that stepped sessions, and the times the thread went idle (diagnostics).
        self.wakeups = 0
        self.idles = 0

    def add(self, signals: LiveSignals) -> None:
        signals.on_active = self._wake.set
        with self._lock:
            self._sessions[signals.session_id] = signals
        self._wake.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rapport-signals", daemon=True)
            self._thread.start()

    def remove(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _active(self) -> list[LiveSignals]:
        with self._lock:
            return [s for s in self._sessions.values() if s.active]

    def _run(self) -> None:
        self.started_at = time.monotonic()
        cpu_start = time.thread_time()
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self._active():
                # Idle: sleep until a session gets someone present. Clear, then look again,
                # so a join between the two looks is not missed.
                self._wake.clear()
                if not self._active():
                    self.idles += 1
                    self.cpu_s = time.thread_time() - cpu_start
                    self._wake.wait()
                    next_at = time.monotonic()
                    continue
            next_at += self._tick_s
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # overrun: do not spin to catch up
            started = time.monotonic()
            self.wakeups += 1
            for signals in self._active():  # a session with nobody present has nothing due
                cpu_before = time.thread_time()
                try:
                    updates = signals.step(started)
                except Exception:
                    log.exception("signal step failed")
                    continue
                finally:
                    signals.cpu_s += time.thread_time() - cpu_before
                for update in updates:
                    self._publish(update)
            self.max_step_s = max(self.max_step_s, time.monotonic() - started)
            self.cpu_s = time.thread_time() - cpu_start

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

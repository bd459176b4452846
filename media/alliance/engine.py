"""The alliance-signal engine: per-frame speech booleans in, events and snapshots out.

This module implements the definitions in design.md ("Alliance-signal definitions") and
nothing else. It is pure — no I/O, no asyncio, no threads, no wall clock — so the live
server, the offline analyser and the exact-ground-truth tests all drive the *same* code.
Time is ``frame index × frame duration``; the session clock starts at the first frame in
which anyone is present (frames before that are ignored, so a room opened early does not
accumulate "absent" time).

Decisions the definitions leave open, and what we chose:

* **Finalized vs provisional.** Bridging means a segment's end is known only ``bridge_gap_s``
  after its last speech frame (and a short candidate is known to survive ``min_segment_s``
  only after that long). Every per-frame classification (talk, silence, overlap, absence)
  is *finalized* once both participants' status for that frame is certain, which lags real
  time by at most ``bridge_gap_s + min_segment_s``. Snapshots add a *provisional tail* for
  the not-yet-final frames: an open candidate counts as talk up to its last speech frame,
  the pause after it counts as not-talk. Live totals therefore never lag, but may be
  corrected by up to half a second (e.g. a pause first shown as silence turns out to be
  bridged). ``finalize()`` closes everything and the result is exact.
* **Turns.** ``turns`` counts floor *changes* only: the first qualifying segment of the
  session takes the floor without counting as a turn. Floor decisions are taken in order of
  segment start, as early as they are certain: a segment qualifies as soon as it has lasted
  ``turn_min_s`` (and ``backchannel_max_s``), without waiting for it to end.
* **Backchannels** are detected regardless of who holds the floor: any segment that starts
  and ends inside a segment of the other participant (both ends inclusive) and lasts under
  ``backchannel_max_s``.
* **Interruption / latency.** The previous floor holder's "last segment" is their latest
  talk segment that started at or before the new holder's segment start. The new holder
  interrupted exactly when they started while that segment was still running. Otherwise
  the change is a reply and its latency is ``new start − that segment's end`` (≥ 0); an
  interruption has no latency (``latency_s=None`` on its ``turn_change``) and is counted
  on its own, so a median reply time is never negative.
* **Ties.** Segments starting on the same frame are ordered therapist first.
* **Session end** (``finalize``) and **absence** end an open segment at its last speech frame.
* ``last_5min`` long silences are the long-silence stretches that overlap the window; turns,
  interruptions and backchannels are counted by their start time.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import numpy as np

from media.alliance.attribution import AttributionTuning, Attributor
from media.alliance.silero import SileroTrack, silero_probabilities
from media.alliance.vad import FrameFeatures, VadTuning, VoiceActivityDetector
from media.participants import ROLES, Role, other_role

__all__ = [
    "ROLES",
    "ByRole",
    "EventKind",
    "ParticipantAudio",
    "Role",
    "SignalConfig",
    "SignalEngine",
    "SignalEvent",
    "Snapshot",
    "TimelineSecond",
    "WindowTotals",
]


@dataclass(frozen=True)
class SignalConfig:
    """Thresholds of the definitions. All durations are converted to whole frames once, so
    comparisons are exact integer tests (0.48 s of 20 ms frames is 24 frames, not 23.99…)."""

    frame_ms: int = 20
    bridge_gap_s: float = 0.5
    min_segment_s: float = 0.1
    long_silence_s: float = 3.0
    backchannel_max_s: float = 1.0
    turn_min_s: float = 1.0
    window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        for name in (
            "bridge_gap_s",
            "min_segment_s",
            "long_silence_s",
            "backchannel_max_s",
            "turn_min_s",
            "window_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def frame_s(self) -> float:
        return self.frame_ms / 1000.0

    def frames(self, seconds: float) -> int:
        """Whole frames in ``seconds`` (rounded, so float noise cannot move a threshold)."""
        return round(seconds * 1000.0 / self.frame_ms)

    @property
    def bridge_frames(self) -> int:
        """A pause of fewer than this many non-speech frames is bridged."""
        return max(1, self.frames(self.bridge_gap_s))

    @property
    def min_segment_frames(self) -> int:
        return self.frames(self.min_segment_s)

    @property
    def long_silence_frames(self) -> int:
        return max(1, self.frames(self.long_silence_s))

    @property
    def backchannel_frames(self) -> int:
        """A backchannel lasts *fewer* than this many frames."""
        return self.frames(self.backchannel_max_s)

    @property
    def turn_frames(self) -> int:
        """A segment of at least this many frames can take the floor."""
        return max(1, self.frames(self.turn_min_s))

    @property
    def window_frames(self) -> int:
        return max(1, self.frames(self.window_s))


class EventKind(StrEnum):
    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"
    TURN_CHANGE = "turn_change"
    INTERRUPTION = "interruption"
    BACKCHANNEL = "backchannel"
    LONG_SILENCE_START = "long_silence_start"
    LONG_SILENCE_END = "long_silence_end"


@dataclass(frozen=True)
class SignalEvent:
    """One thing that happened in the session.

    ``t_s`` is when it happened; ``decided_s`` is the session time at which the engine could
    say so (``decided_s - t_s`` is the engine's lag for this event). ``provisional`` marks
    events that may be taken back: a ``speech_start`` is emitted on the first speech frame
    of a candidate, and if the candidate turns out shorter than ``min_segment_s`` a
    ``speech_end`` with ``details["dropped"] = True`` follows.
    """

    kind: EventKind
    t_s: float
    decided_s: float
    role: Role | None = None
    duration_s: float | None = None
    provisional: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


T = TypeVar("T")


@dataclass(frozen=True)
class ByRole(Generic[T]):
    """A value per role; serialises as ``{"therapist": …, "client": …}``."""

    therapist: T
    client: T

    def __getitem__(self, role: Role | str) -> T:
        return self.therapist if Role(role) is Role.THERAPIST else self.client


@dataclass(frozen=True)
class WindowTotals:
    """Totals over the trailing ``window_s`` of the session (the panel's "last 5 minutes")."""

    duration_s: float
    therapist_talk_s: float
    client_talk_s: float
    client_share: float | None
    silence_s: float
    overlap_s: float
    long_silences: int
    turns: int
    interruptions: ByRole[int]
    backchannels: int
    absent_s: float


@dataclass(frozen=True)
class Snapshot:
    """Everything the therapist's panel shows, for the whole session so far.

    Its JSON form (rounded, as the panel and stored rows expect) is declared in
    ``media.alliance.payload`` so this module stays free of serialisation concerns.
    """

    duration_s: float
    therapist_talk_s: float
    client_talk_s: float
    client_share: float | None
    silence_s: float
    overlap_s: float
    long_silences: int
    longest_monologue_s: ByRole[float]
    turns: int
    interruptions: ByRole[int]
    backchannels: int
    median_response_latency_s: ByRole[float | None]
    absent_s: float
    last_5min: WindowTotals
    speaking: tuple[Role, ...]
    current_silence_s: float

    def talk_s(self, role: Role | str) -> float:
        return self.therapist_talk_s if Role(role) is Role.THERAPIST else self.client_talk_s


@dataclass(frozen=True)
class TimelineSecond:
    """Who talked during one second of the session (majority of that second's frames), and
    who was absent. Seconds are counted from the session start."""

    second: int
    therapist: bool
    client: bool
    therapist_absent: bool
    client_absent: bool


def share(client_talk: float, therapist_talk: float) -> float | None:
    """Client share of talk; None when nobody has talked (0/0 is not 50 %)."""
    total = client_talk + therapist_talk
    return None if total <= 0 else client_talk / total


# --- internal state ------------------------------------------------------------------------

# A frame's joint status packed in 4 bits, so totals and the sliding window are just counts
# per code (16 integers) instead of per-metric bookkeeping.
_T_TALK = 1
_C_TALK = 2
_T_PRESENT = 4
_C_PRESENT = 8
_BOTH_PRESENT = _T_PRESENT | _C_PRESENT
_CODES = range(16)
_TALK_CODES = {
    Role.THERAPIST: tuple(c for c in _CODES if c & _T_TALK),
    Role.CLIENT: tuple(c for c in _CODES if c & _C_TALK),
}
_OVERLAP_CODES = tuple(c for c in _CODES if c & _T_TALK and c & _C_TALK)
_SILENCE_CODES = tuple(
    c for c in _CODES if c & _BOTH_PRESENT == _BOTH_PRESENT and not c & (_T_TALK | _C_TALK)
)
_ABSENT_CODES = tuple(c for c in _CODES if c & _BOTH_PRESENT != _BOTH_PRESENT)


def _is_silence(code: int) -> bool:
    return code & (_BOTH_PRESENT | _T_TALK | _C_TALK) == _BOTH_PRESENT


def _code(t_talk: bool, c_talk: bool, t_present: bool, c_present: bool) -> int:
    return (
        (_T_TALK if t_talk else 0)
        | (_C_TALK if c_talk else 0)
        | (_T_PRESENT if t_present else 0)
        | (_C_PRESENT if c_present else 0)
    )


@dataclass(eq=False)
class _Segment:
    """A talk-segment candidate; ``end`` is exclusive and, while open, is last speech + 1."""

    role: Role
    start: int
    end: int
    closed: bool = False
    confirmed: bool = False
    dropped: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(eq=False)
class _Track:
    """One participant's segmentation state and the per-frame results not yet consumed by
    the joint (both-participant) stage."""

    role: Role
    open: _Segment | None = None
    #: Recent segments (open or kept) for backchannel/interruption look-ups, oldest first.
    segments: deque[_Segment] = field(default_factory=deque)
    #: Final in-segment status of frames [joint cursor, resolved_to).
    status: deque[bool] = field(default_factory=deque)
    #: Presence of frames [joint cursor, current tick).
    present: deque[bool] = field(default_factory=deque)
    resolved_to: int = 0
    longest: int = 0


class _Wait:
    """Sentinel: a decision needs frames that have not been finalized yet."""


_WAIT = _Wait()


@dataclass
class _LongSilence:
    start: int
    end: int | None = None


class SignalEngine:
    """Incremental implementation of the alliance-signal definitions for one session.

    Drive it with exactly one ``advance()`` per frame tick; read ``snapshot()`` whenever
    the panel wants numbers (cost independent of session length); call ``finalize()`` once
    at the end of the session.
    """

    def __init__(self, config: SignalConfig | None = None) -> None:
        self.config = config or SignalConfig()
        cfg = self.config
        self._frame_s = cfg.frame_s
        self._bridge = cfg.bridge_frames
        self._min_seg = cfg.min_segment_frames
        self._long = cfg.long_silence_frames
        self._bc = cfg.backchannel_frames
        self._turn = cfg.turn_frames
        self._window = cfg.window_frames
        self._qualify_open = max(self._turn, self._bc)

        self._started = False
        self._finalized = False
        self._tick = 0  # session frames seen
        self._tracks = {role: _Track(role) for role in ROLES}
        self._events: list[SignalEvent] = []

        # Joint (finalized) stage.
        self._cursor = 0
        self._counts = [0] * 16
        self._win_codes: deque[int] = deque()
        self._win_counts = [0] * 16
        self._silence_run = 0
        self._long_silences = 0
        self._long_list: deque[_LongSilence] = deque()
        self._timeline: list[TimelineSecond] = []
        self._sec_index = 0
        self._sec_frames = 0
        self._sec_counts = [0, 0, 0, 0]  # t talk, c talk, t absent, c absent

        # Floor / turn stage.
        self._pending: deque[_Segment] = deque()
        self._floor: Role | None = None
        self._turns = 0
        self._interruptions = {role: 0 for role in ROLES}
        self._backchannels = 0
        self._latencies: dict[Role, list[int]] = {role: [] for role in ROLES}
        self._turn_times: deque[int] = deque()
        self._interruption_times: deque[tuple[int, Role]] = deque()
        self._bc_times: deque[int] = deque()

    # --- public API ------------------------------------------------------------------------

    @property
    def frame_s(self) -> float:
        return self._frame_s

    @property
    def now_s(self) -> float:
        """Session time after the frames advanced so far."""
        return self._tick * self._frame_s

    @property
    def frames(self) -> int:
        return self._tick

    @property
    def floor_holder(self) -> Role | None:
        """Who holds the floor according to finalized decisions (None before the first)."""
        return self._floor

    @property
    def finalized(self) -> bool:
        return self._finalized

    def advance(self, speech: Mapping[Role, bool | None]) -> list[SignalEvent]:
        """Feed one frame tick for the whole session and return the events it produced.

        Per role: True = speech frame, False = present but not speaking (also muted),
        None or missing = absent.
        """
        if self._finalized:
            raise RuntimeError("advance() after finalize()")
        values = {role: speech.get(role) for role in ROLES}
        if not self._started:
            if all(v is None for v in values.values()):
                return []
            self._started = True
        self._events = []
        k = self._tick
        self._tick = k + 1
        for role in ROLES:
            self._step_track(self._tracks[role], k, values[role])
        self._process_floor()
        self._drain_joint()
        self._evict_window()
        return self._events

    def finalize(self) -> Snapshot:
        """Close open segments (end of session) and return the exact final snapshot."""
        if not self._finalized:
            self._events = []
            last = self._tick - 1
            for role in ROLES:
                track = self._tracks[role]
                if track.open is not None:
                    self._close(track, last)
            self._process_floor()
            self._drain_joint()
            ongoing = self._silence_run
            self._close_silence_run(self._cursor)
            self._silence_run = ongoing  # the final snapshot still reports the last silence
            self._flush_second()
            self._finalized = True
            self._evict_window()
        return self.snapshot()

    def retract_presence(self, role: Role, from_frame: int) -> int:
        """Re-date an absence: ``role`` was gone from ``from_frame`` on, not from now.

        A participant whose media stalls is noticed only after the stall detector's delay
        (3 s); until then they were fed as present and not speaking, so the gap was counted
        as silence (and could complete a false long silence). This turns the frames of that
        window that counted as silence into absence: the totals, the 5-minute window, the
        current silence, long silences and the timeline become what feeding the absence in
        real time would have given, as the session clock counts it: talk by the person still
        there leaves the totals too (talk counts only while both are in). Segments, turns and
        monologues already closed in the window are not redone. The frames must still be in
        the 5-minute window. Returns the number of frames re-dated.
        """
        if self._finalized or not self._started:
            return 0
        role = Role(role)
        window_first = self._cursor - len(self._win_codes)
        first = max(from_frame, window_first, 0)
        if first >= self._tick:
            return 0
        present_bit = _T_PRESENT if role is Role.THERAPIST else _C_PRESENT
        changed = 0
        # Frames not final yet: their presence is still queued per track.
        track = self._tracks[role]
        for offset in range(max(0, first - self._cursor), len(track.present)):
            if track.present[offset]:
                track.present[offset] = False
                changed += 1
        if first >= self._cursor:
            return changed
        # Final frames [first, cursor): their codes are in the window.
        run_intact = True  # every final frame from ``first`` on was silence
        for index in range(first, self._cursor):
            j = index - window_first
            code = self._win_codes[j]
            if not _is_silence(code):
                run_intact = False
            if not code & present_bit:
                continue
            # As the session clock would have fed it: the one still there is present and not
            # speaking, so their talk in the window leaves the totals with the silence.
            self._recode(j, code, code & ~present_bit & ~(_T_TALK | _C_TALK))
            changed += 1
        # The current silence run ends where the absence now starts.
        run = self._silence_run
        before = run - (self._cursor - first) if run_intact else 0
        if run >= self._long and (not run_intact or before < self._long):
            # Its long silence was completed by invented frames: it never happened.
            self._long_silences -= 1
            if self._long_list and self._long_list[-1].end is None:
                self._long_list.pop()
            self._silence_run = 0
        elif run_intact and before > 0:
            self._silence_run = before
            self._close_silence_run(first)  # a real long silence ends where absence began
        else:
            self._silence_run = 0
        self._redo_seconds(first, window_first)
        return changed

    def retract_talk(self, role: Role, spans: Iterable[tuple[int, int]]) -> int:
        """Take back talk: ``role`` did not speak in the frames ``[start, end)`` of ``spans``.

        Attribution can learn only later that a voice it gave a participant was somebody
        else's (a TV playing before their first word seeds their level model; their real,
        louder voice that takes turns shows it up seconds later, see
        ``Attributor.take_retractions``). This makes the totals, overlap, silence, the
        current silence run, long silences (a retraction may complete one that really
        happened, or merge two into one), the timeline seconds and the 5-minute window
        what feeding "not speaking" in those frames in real time would have given, for
        frames already final for the role. What is not redone, as with
        ``retract_presence``: segments, turns, interruptions, backchannels, latencies and
        monologues the talk formed, the long-silence events already emitted, and frames not
        yet final for the role (still inside its open candidate). Frames before the
        5-minute window are left as counted. A span's bridged pauses were talk only
        because of the speech around them: the caller includes them in the span. Returns
        the number of frames changed; a frame without the role's talk is not changed, so
        retracting twice counts nothing twice.
        """
        if self._finalized or not self._started:
            return 0
        role = Role(role)
        bit = _T_TALK if role is Role.THERAPIST else _C_TALK
        window_first = self._cursor - len(self._win_codes)
        track = self._tracks[role]
        pending = len(track.status)  # final for the role, not yet joined with the other
        changed = 0
        first: int | None = None
        for start, end in spans:
            for index in range(max(start, self._cursor), min(end, self._cursor + pending)):
                offset = index - self._cursor
                if track.status[offset]:
                    track.status[offset] = False
                    changed += 1
            for index in range(max(start, window_first, 0), min(end, self._cursor)):
                j = index - window_first
                code = self._win_codes[j]
                if not code & bit:
                    continue
                self._recode(j, code, code & ~bit)
                changed += 1
                first = index if first is None else min(first, index)
        if first is not None:
            self._redo_silences(first, window_first)
            self._redo_seconds(first, window_first)
        return changed

    def _redo_silences(self, first: int, window_first: int) -> None:
        """Recount the silence runs from the one holding final frame ``first`` to now: the
        long silences among them and the current run (after frames became silence)."""
        codes = self._win_codes
        lo = first
        while lo > window_first and _is_silence(codes[lo - 1 - window_first]):
            lo -= 1
        # The run may have begun before the window: a long silence remembers its start, a
        # run covering the whole window its length; a short one's earlier part is unknown.
        before = 0
        if lo == window_first and _is_silence(codes[0]):
            for old in self._long_list:
                if old.start < window_first and (old.end is None or old.end > window_first):
                    before = window_first - old.start
            if not before and self._silence_run > self._cursor - window_first:
                before = self._silence_run - (self._cursor - window_first)
        kept = [s for s in self._long_list if s.end is not None and s.end <= lo]
        self._long_silences -= len(self._long_list) - len(kept)
        self._long_list = deque(kept)
        run = before
        for index in range(lo, self._cursor):
            if _is_silence(codes[index - window_first]):
                run += 1
                if run == self._long:
                    self._long_silences += 1
                    self._long_list.append(_LongSilence(index + 1 - run))
            else:
                if run >= self._long:
                    self._long_list[-1].end = index
                run = 0
        self._silence_run = run

    def _recode(self, j: int, code: int, new: int) -> None:
        """Window frame ``j`` was counted as ``code`` and is now ``new`` (a re-dated absence
        or retracted talk): its window slot and both counts move with it."""
        self._win_codes[j] = new
        self._counts[code] -= 1
        self._counts[new] += 1
        self._win_counts[code] -= 1
        self._win_counts[new] += 1

    def _redo_seconds(self, first: int, window_first: int) -> None:
        """Recount the timeline seconds from the one holding ``first`` on (window codes)."""
        ms = self.config.frame_ms
        for second in range(first * ms // 1000, self._sec_index + 1):
            start = max(-(-second * 1000 // ms), window_first)
            end = min(-(-(second + 1) * 1000 // ms), self._cursor)
            codes = [self._win_codes[i - window_first] for i in range(start, end)]
            acc = [
                sum(bool(c & _T_TALK) for c in codes),
                sum(bool(c & _C_TALK) for c in codes),
                sum(not c & _T_PRESENT for c in codes),
                sum(not c & _C_PRESENT for c in codes),
            ]
            if second == self._sec_index:
                self._sec_counts, self._sec_frames = acc, len(codes)
                continue
            n = len(codes)
            for k in range(len(self._timeline) - 1, -1, -1):
                if self._timeline[k].second == second:
                    self._timeline[k] = TimelineSecond(
                        second=second,
                        therapist=2 * acc[0] >= n,
                        client=2 * acc[1] >= n,
                        therapist_absent=2 * acc[2] >= n,
                        client_absent=2 * acc[3] >= n,
                    )
                    break

    def drain_events(self) -> list[SignalEvent]:
        """Events produced by the last ``advance()``/``finalize()`` call."""
        return list(self._events)

    def timeline(self) -> list[TimelineSecond]:
        """All finalized seconds (a second is final once every frame of it is)."""
        return list(self._timeline)

    def timeline_since(self, second: int) -> list[TimelineSecond]:
        """Finalized seconds from ``second`` on; poll with the last seen index + 1."""
        return self._timeline[max(0, second) :]

    def snapshot(self) -> Snapshot:
        """Current totals: finalized frames plus the provisional tail (see module doc)."""
        fs = self._frame_s
        self._evict_window()
        counts = list(self._counts)
        win_counts = list(self._win_counts)
        window_start = max(0, self._tick - self._window)
        run = self._silence_run
        extra_long = 0
        extra_long_in_window = 0
        for index, code in self._tail_codes():
            counts[code] += 1
            if index >= window_start:
                win_counts[code] += 1
            if _is_silence(code):
                run += 1
                if run == self._long:
                    extra_long += 1
                    extra_long_in_window += 1
            else:
                run = 0

        def total(cs: list[int], codes: Iterable[int]) -> float:
            return sum(cs[c] for c in codes) * fs

        t_talk = total(counts, _TALK_CODES[Role.THERAPIST])
        c_talk = total(counts, _TALK_CODES[Role.CLIENT])
        wt_talk = total(win_counts, _TALK_CODES[Role.THERAPIST])
        wc_talk = total(win_counts, _TALK_CODES[Role.CLIENT])

        longest: dict[Role, float] = {}
        for role in ROLES:
            track = self._tracks[role]
            best = track.longest
            if track.open is not None and track.open.confirmed:
                best = max(best, track.open.length)
            longest[role] = best * fs

        window = WindowTotals(
            duration_s=min(self._tick, self._window) * fs,
            therapist_talk_s=wt_talk,
            client_talk_s=wc_talk,
            client_share=share(wc_talk, wt_talk),
            silence_s=total(win_counts, _SILENCE_CODES),
            overlap_s=total(win_counts, _OVERLAP_CODES),
            long_silences=len(self._long_list) + extra_long_in_window,
            turns=len(self._turn_times),
            interruptions=ByRole(
                therapist=sum(1 for _, r in self._interruption_times if r is Role.THERAPIST),
                client=sum(1 for _, r in self._interruption_times if r is Role.CLIENT),
            ),
            backchannels=len(self._bc_times),
            absent_s=total(win_counts, _ABSENT_CODES),
        )
        return Snapshot(
            duration_s=self._tick * fs,
            therapist_talk_s=t_talk,
            client_talk_s=c_talk,
            client_share=share(c_talk, t_talk),
            silence_s=total(counts, _SILENCE_CODES),
            overlap_s=total(counts, _OVERLAP_CODES),
            long_silences=self._long_silences + extra_long,
            longest_monologue_s=ByRole(
                therapist=longest[Role.THERAPIST], client=longest[Role.CLIENT]
            ),
            turns=self._turns,
            interruptions=ByRole(
                therapist=self._interruptions[Role.THERAPIST],
                client=self._interruptions[Role.CLIENT],
            ),
            backchannels=self._backchannels,
            median_response_latency_s=ByRole(
                therapist=self._median(Role.THERAPIST), client=self._median(Role.CLIENT)
            ),
            absent_s=total(counts, _ABSENT_CODES),
            last_5min=window,
            speaking=tuple(r for r in ROLES if self._tracks[r].open is not None),
            current_silence_s=run * fs,
        )

    # --- per-participant segmentation --------------------------------------------------------

    def _step_track(self, track: _Track, k: int, value: bool | None) -> None:
        track.present.append(value is not None)
        seg = track.open
        if value is True:
            if seg is None:
                seg = _Segment(track.role, start=k, end=k + 1)
                track.open = seg
                track.segments.append(seg)
                self._pending.append(seg)
                self._emit(EventKind.SPEECH_START, k, track.role, provisional=True)
            else:
                seg.end = k + 1
            if not seg.confirmed and seg.length >= self._min_seg:
                seg.confirmed = True
            if seg.confirmed:
                track.status.extend([True] * (seg.end - track.resolved_to))
                track.resolved_to = seg.end
        elif seg is not None:
            # Pause length so far is k + 1 - seg.end frames; absence ends it at once.
            if value is None or k + 1 - seg.end >= self._bridge:
                self._close(track, k)
        else:
            track.status.append(False)
            track.resolved_to = k + 1

    def _close(self, track: _Track, k: int) -> None:
        """End the open candidate; frames up to and including ``k`` become final."""
        seg = track.open
        assert seg is not None
        track.open = None
        seg.closed = True
        kept = seg.length >= self._min_seg and seg.length > 0
        if kept:
            seg.confirmed = True
            track.status.extend([True] * (seg.end - track.resolved_to))
            track.status.extend([False] * (k + 1 - seg.end))
            track.longest = max(track.longest, seg.length)
        else:
            seg.dropped = True
            track.status.extend([False] * (k + 1 - track.resolved_to))
            if track.segments and track.segments[-1] is seg:
                track.segments.pop()
        track.resolved_to = k + 1
        self._emit(
            EventKind.SPEECH_END,
            seg.end,
            track.role,
            duration_s=seg.length * self._frame_s,
            details={"start_s": seg.start * self._frame_s, "dropped": not kept},
        )

    # --- floor: backchannels, turns, interruptions, latency -----------------------------------

    def _latest_segment(self, role: Role, at_or_before: int) -> _Segment | _Wait | None:
        """The role's latest kept segment starting at or before a frame; waits while the
        answer could still be an unconfirmed candidate."""
        for seg in reversed(self._tracks[role].segments):
            if seg.start > at_or_before or seg.dropped:
                continue
            if not seg.confirmed:
                return _WAIT
            return seg
        return None

    def _is_backchannel(self, seg: _Segment) -> bool | _Wait:
        """Closed, kept ``seg`` shorter than the backchannel limit: inside the other's?"""
        host = self._latest_segment(other_role(seg.role), seg.start)
        if host is None:
            return False
        if isinstance(host, _Wait):
            return host
        if host.end >= seg.end:
            return True
        return False if host.closed else _WAIT

    def _process_floor(self) -> None:
        """Decide pending segments strictly in start order, each as soon as it is certain."""
        pending = self._pending
        while pending:
            seg = pending[0]
            if seg.dropped:
                pending.popleft()
                continue
            if not seg.closed:
                if not seg.confirmed or seg.length < self._qualify_open:
                    break
                qualifying = True
            else:
                backchannel = False
                if seg.length < self._bc:
                    bc = self._is_backchannel(seg)
                    if isinstance(bc, _Wait):
                        break
                    backchannel = bc
                if backchannel:
                    pending.popleft()
                    self._backchannels += 1
                    self._bc_times.append(seg.start)
                    self._emit(
                        EventKind.BACKCHANNEL,
                        seg.start,
                        seg.role,
                        duration_s=seg.length * self._frame_s,
                        details={"during": str(other_role(seg.role))},
                    )
                    continue
                qualifying = seg.length >= self._turn
            if not qualifying:
                pending.popleft()
                continue
            if self._floor is None or self._floor is seg.role:
                pending.popleft()
                self._floor = seg.role
                continue
            if not self._take_floor(seg):
                break
            pending.popleft()
        self._prune_segments()

    def _take_floor(self, seg: _Segment) -> bool:
        """Floor change to ``seg.role``; False if the previous holder's status at the
        change is not final yet."""
        previous = self._floor
        assert previous is not None
        last = self._latest_segment(previous, seg.start)
        if isinstance(last, _Wait):
            return False
        latency: int | None
        if last is None:
            interruption, latency = False, None
        elif last.closed:
            interruption = last.end > seg.start
            latency = None if interruption else seg.start - last.end
        elif last.end > seg.start:
            interruption, latency = True, None
        else:
            return False  # the holder is in a pause that may still be bridged
        self._floor = seg.role
        self._turns += 1
        self._turn_times.append(seg.start)
        if latency is not None:
            self._add_latency(seg.role, latency)
        self._emit(
            EventKind.TURN_CHANGE,
            seg.start,
            seg.role,
            details={
                "from": str(previous),
                "interruption": interruption,
                "latency_s": None if latency is None else latency * self._frame_s,
            },
        )
        if interruption:
            self._interruptions[seg.role] += 1
            self._interruption_times.append((seg.start, seg.role))
            self._emit(
                EventKind.INTERRUPTION, seg.start, seg.role, details={"interrupted": str(previous)}
            )
        return True

    def _prune_segments(self) -> None:
        """Forget segments no future look-up can return, keeping memory O(1) per session."""
        horizon = self._pending[0].start if self._pending else self._tick
        for track in self._tracks.values():
            segs = track.segments
            # segs[1] must be confirmed: an unconfirmed candidate may still be dropped.
            while len(segs) >= 2 and segs[1].confirmed and segs[1].start <= horizon:
                segs.popleft()

    def _add_latency(self, role: Role, frames: int) -> None:
        bisect.insort(self._latencies[role], frames)

    def _median(self, role: Role) -> float | None:
        values = self._latencies[role]
        n = len(values)
        if n == 0:
            return None
        mid = n // 2
        frames = values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2
        return frames * self._frame_s

    # --- joint stage: silence, overlap, absence, timeline, window ------------------------------

    def _drain_joint(self) -> None:
        t = self._tracks[Role.THERAPIST]
        c = self._tracks[Role.CLIENT]
        while t.status and c.status:
            t_talk, c_talk = t.status.popleft(), c.status.popleft()
            self._consume(_code(t_talk, c_talk, t.present.popleft(), c.present.popleft()))

    def _consume(self, code: int) -> None:
        index = self._cursor
        self._cursor = index + 1
        self._counts[code] += 1
        self._win_codes.append(code)
        self._win_counts[code] += 1
        if _is_silence(code):
            self._silence_run += 1
            if self._silence_run == self._long:
                start = index + 1 - self._long
                self._long_silences += 1
                self._long_list.append(_LongSilence(start))
                self._emit(EventKind.LONG_SILENCE_START, start)
        else:
            self._close_silence_run(index)
        self._add_to_second(index, code)

    def _close_silence_run(self, end: int) -> None:
        if self._silence_run >= self._long:
            self._long_list[-1].end = end
            self._emit(
                EventKind.LONG_SILENCE_END,
                end,
                duration_s=self._silence_run * self._frame_s,
                details={"start_s": (end - self._silence_run) * self._frame_s},
            )
        self._silence_run = 0

    def _add_to_second(self, index: int, code: int) -> None:
        second = index * self.config.frame_ms // 1000
        if second != self._sec_index:
            self._flush_second()
            self._sec_index = second
        self._sec_frames += 1
        acc = self._sec_counts
        acc[0] += bool(code & _T_TALK)
        acc[1] += bool(code & _C_TALK)
        acc[2] += not code & _T_PRESENT
        acc[3] += not code & _C_PRESENT

    def _flush_second(self) -> None:
        n = self._sec_frames
        if n == 0:
            return
        acc = self._sec_counts
        self._timeline.append(
            TimelineSecond(
                second=self._sec_index,
                therapist=2 * acc[0] >= n,
                client=2 * acc[1] >= n,
                therapist_absent=2 * acc[2] >= n,
                client_absent=2 * acc[3] >= n,
            )
        )
        self._sec_frames = 0
        self._sec_counts = [0, 0, 0, 0]

    def _evict_window(self) -> None:
        start = self._tick - self._window
        codes = self._win_codes
        while codes and self._cursor - len(codes) < start:
            self._win_counts[codes.popleft()] -= 1
        while self._turn_times and self._turn_times[0] < start:
            self._turn_times.popleft()
        while self._interruption_times and self._interruption_times[0][0] < start:
            self._interruption_times.popleft()
        while self._bc_times and self._bc_times[0] < start:
            self._bc_times.popleft()
        longs = self._long_list
        while longs and longs[0].end is not None and longs[0].end <= start:
            longs.popleft()

    def _tail_codes(self) -> Iterator[tuple[int, int]]:
        """Provisional codes of frames [cursor, tick): final per-role status where a role
        has one, else "talking" inside an open candidate up to its last speech frame."""
        tracks = [self._tracks[r] for r in ROLES]
        for offset in range(self._tick - self._cursor):
            index = self._cursor + offset
            flags = []
            for track in tracks:
                if offset < len(track.status):
                    flags.append(track.status[offset])
                else:
                    seg = track.open
                    flags.append(seg is not None and seg.start <= index < seg.end)
            t, c = tracks
            yield index, _code(flags[0], flags[1], t.present[offset], c.present[offset])

    def _emit(
        self,
        kind: EventKind,
        frame: int,
        role: Role | None = None,
        *,
        duration_s: float | None = None,
        provisional: bool = False,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self._events.append(
            SignalEvent(
                kind=kind,
                t_s=frame * self._frame_s,
                decided_s=self._tick * self._frame_s,
                role=role,
                duration_s=duration_s,
                provisional=provisional,
                details=dict(details or {}),
            )
        )


class SessionClockEngine(SignalEngine):
    """The engine as a live session needs it: talk counts only while both people are in.

    The pure engine counts a participant's talk whenever *they* are present, which is right
    for its own contract but not for a call: a therapist talking while the client is still in
    the waiting room, or has dropped out, would tilt the balance, lengthen a monologue and
    later pass as the start of a turn. So while either person is away, the one who is there
    is fed as present and not speaking: those frames are absence (reported on their own),
    never talk or silence. On the first frame of an absence the present person is fed as
    absent too, which ends their open segment at its last speech frame instead of letting
    the half-second bridge carry it across the gap; that frame is absent time either way.

    The masking lives inside ``advance`` so replaying the recorded (unmasked) input after a
    restart reproduces it exactly, and ``rapport analyze`` uses this class too: the live
    path and the offline analyser share one definition of the session clock.
    """

    def __init__(self, config: SignalConfig | None = None) -> None:
        super().__init__(config)
        self._together = False

    def advance(self, speech: Mapping[Role, bool | None]) -> list[SignalEvent]:
        values = {role: speech.get(role) for role in Role}
        together = all(value is not None for value in values.values())
        if not together:
            lone: bool | None = None if self._together else False
            values = {role: None if value is None else lone for role, value in values.items()}
        self._together = together
        return super().advance(values)


class ParticipantAudio:
    """Glue for the live path: one ``VoiceActivityDetector`` per role, PCM in, ticks out.

    Audio for the two participants arrives independently and in bursts, while the engine
    needs both participants' state for the same frame. So ``push`` only runs the VAD and
    queues its per-frame features; ``tick`` (called by the session's single frame clock)
    takes one frame per role and lets the ``Attributor`` decide, with both frames and their
    recent past in hand, which speech-like frames are really each person's own voice (not
    the other one leaking back from the loudspeaker, not a TV). A role is absent until
    ``set_present(role, True)``; a present role with no queued audio (muted, or packets
    late) counts as not speaking. The queue is bounded (oldest frames dropped) so a stalled
    clock cannot grow memory.
    """

    def __init__(
        self,
        engine: SignalEngine | None = None,
        *,
        sample_rate: int = 48000,
        aggressiveness: int = 2,
        max_backlog_frames: int | None = 50,
        attribution: AttributionTuning | None = None,
        vad_tuning: VadTuning | None = None,
    ) -> None:
        self.engine = engine or SignalEngine()
        self.sample_rate = sample_rate
        frame_ms = self.engine.config.frame_ms
        self.detectors = {
            role: VoiceActivityDetector(sample_rate, frame_ms, aggressiveness, vad_tuning)
            for role in ROLES
        }
        detector = self.detectors[Role.THERAPIST]
        self.frame_samples = detector.frame_samples
        self.attributor = Attributor(
            detector.n_bands,
            detector.n_gate_bands,
            attribution or AttributionTuning(frame_ms=frame_ms),
        )
        self._frames: dict[Role, deque[FrameFeatures]] = {
            role: deque(maxlen=max_backlog_frames) for role in ROLES
        }
        self._partial: dict[Role, np.ndarray] = {
            role: np.zeros(0, dtype=np.int16) for role in ROLES
        }
        # With Silero: each role's whole frames not yet through voice activity (see push).
        tracks = {role: self.detectors[role].silero_track for role in ROLES}
        self._silero: dict[Role, SileroTrack] | None = (
            {role: track for role, track in tracks.items() if track is not None}
            if all(track is not None for track in tracks.values())
            else None
        )
        self._raw: dict[Role, list[np.ndarray]] = {role: [] for role in ROLES}
        self._raw_frames = dict.fromkeys(ROLES, 0)
        self._max_raw = max_backlog_frames or 50
        self._present = {role: False for role in ROLES}
        self._muted = {role: False for role in ROLES}
        # The values the last tick fed the engine (attributed, not the raw VAD verdicts): the
        # live path records them so a restarted server can replay a session's input exactly.
        self.last_values: dict[Role, bool | None] = dict.fromkeys(ROLES)
        #: The detectors' own verdicts of the last tick, before attribution (diagnostics).
        self.last_raw: dict[Role, bool] = dict.fromkeys(ROLES, False)
        #: Whether the last tick had a real audio frame per role (a stall has none): the
        #: live path dates an absence back to the last tick that had one.
        self.last_had_frame: dict[Role, bool] = dict.fromkeys(ROLES, False)
        # Word-end carry (VadTuning.carry_frames): frames carried so far in the current run.
        self._carried = dict.fromkeys(ROLES, 0)
        #: Talk the last tick took back, per role, as engine frame ranges (see ``_retract``):
        #: the live path records it so a restart replays the same retraction.
        self.last_retractions: dict[Role, list[tuple[int, int]]] = {}
        # The attributor's ticks the carry added, while it may still give frames back.
        self._carried_steps: dict[Role, set[int]] = {role: set() for role in ROLES}

    def set_present(self, role: Role, present: bool) -> None:
        """Joined/left/reconnecting. Leaving discards queued audio: it belongs to a
        connection that no longer exists (and so does its echo path)."""
        self._flush()  # the detectors heard it (their noise floor, Silero's state) all the same
        if not present and self._present[role]:
            self.attributor.reset(role)
        self._present[role] = present
        if not present:
            self._frames[role].clear()
            self._partial[role] = np.zeros(0, dtype=np.int16)

    def set_muted(self, role: Role, muted: bool) -> None:
        self._muted[role] = muted

    def push(self, role: Role, samples: np.ndarray) -> int:
        """Queue mono int16 PCM of any length; returns how many whole frames it completed."""
        pcm = np.asarray(samples, dtype=np.int16).reshape(-1)
        if self._partial[role].size:
            pcm = np.concatenate([self._partial[role], pcm])
        n = self.frame_samples
        whole = pcm.size // n
        self._partial[role] = pcm[whole * n :].copy()
        if self._silero is not None:
            # Silero's frames wait for the next tick (or trim, or queued): then both tracks'
            # go through the model in one batch (media/alliance/silero.py), same results.
            if whole:
                self._raw[role].append(pcm[: whole * n])
                self._raw_frames[role] += whole
                if self._raw_frames[role] > self._max_raw:
                    self._flush()
            return whole
        detector = self.detectors[role]
        queue = self._frames[role]
        for i in range(whole):
            queue.append(detector.analyze(pcm[i * n : (i + 1) * n]))
        return whole

    def _flush(self) -> None:
        """Run the voice activity of the frames ``push`` held back for the batched Silero."""
        if self._silero is None:
            return
        roles = [role for role in ROLES if self._raw_frames[role]]
        if not roles:
            return
        n = self.frame_samples
        pcm = [np.concatenate(self._raw[role]) for role in roles]
        probabilities = silero_probabilities(
            [self._silero[role] for role in roles],
            pcm,
            [(n,) * self._raw_frames[role] for role in roles],
        )
        for role, samples, probs in zip(roles, pcm, probabilities, strict=True):
            detector = self.detectors[role]
            queue = self._frames[role]
            for i, prob in enumerate(probs.tolist()):
                queue.append(detector.analyze(samples[i * n : (i + 1) * n], silero=prob))
            self._raw[role].clear()
            self._raw_frames[role] = 0

    def queued(self, role: Role) -> int:
        self._flush()
        return len(self._frames[role])

    def trim(self, role: Role, keep: int) -> int:
        """Drop the oldest frames beyond ``keep`` (catching up with real time after a
        burst); returns how many were dropped."""
        self._flush()
        queue = self._frames[role]
        dropped = 0
        while len(queue) > keep:
            queue.popleft()
            dropped += 1
        return dropped

    def tick(self) -> list[SignalEvent]:
        """Advance the engine by one frame using one queued frame per present role."""
        self._flush()
        frames: dict[Role, FrameFeatures | None] = {}
        for role in ROLES:
            queue = self._frames[role]
            frame = queue.popleft() if queue else None
            self.last_had_frame[role] = frame is not None
            # A muted or absent participant's loudspeaker signal is silence: no echo from it.
            usable = self._present[role] and not self._muted[role]
            frames[role] = frame if usable else None
            self.last_raw[role] = frame is not None and usable and frame.speech
        # A copy: the attributor keeps the dict it returns as its own state.
        verdicts = dict(self.attributor.step(frames))
        self._carry(frames, verdicts)
        values: dict[Role, bool | None] = {
            role: verdicts[role] if self._present[role] else None for role in ROLES
        }
        self.last_values = values
        events = self.engine.advance(values)
        self._retract()
        return events

    def _retract(self) -> None:
        """Take back, in the engine, talk the attributor has found was not the speaker's.

        The attributor counts every tick, the engine only from its first frame with anyone
        present (and a restored session's engine starts ahead of a new attributor): the
        difference maps one onto the other. A range is widened by the frames the word-end
        carry added after its last frame (``_carry``): they were talk only because of it."""
        self.last_retractions = {}
        for role in ROLES:
            if self._carried_steps[role] and not self.attributor.remembers(role):
                self._carried_steps[role] = set()
        taken = self.attributor.take_retractions(self.engine.config.bridge_frames)
        if not taken:
            return
        offset = self.attributor.steps - self.engine.frames
        for role, spans in taken.items():
            carried = self._carried_steps[role]
            frames = []
            for start, end in spans:
                while end in carried:
                    end += 1
                if end - offset > 0:
                    frames.append((max(0, start - offset), end - offset))
            if frames and self.engine.retract_talk(role, frames):
                self.last_retractions[role] = frames

    def _carry(
        self, frames: Mapping[Role, FrameFeatures | None], verdicts: dict[Role, bool]
    ) -> None:
        """Carry each role's run of attributed speech through a few frames the detector
        rejected while Silero still hears voice: word ends fade under the noise floor (the
        gate loses them, measured on real-room dialogues: 0-1 dB short of the margin, Silero
        >= 0.35 on 97 % of them), and a lost word end is lost talk, or a pause that grows
        past the bridging gap. Done here, after attribution, and never on a frame the
        detector called speech (attribution's vetoes stand), so the quiet frames do not pull
        the level model's run mean down; measured in the detector instead, they did, and the
        level model then vetoed whole runs (docs/silero.md)."""
        tuning = self.detectors[Role.THERAPIST].tuning
        if not tuning.carry_frames:
            return
        for role in ROLES:
            frame = frames[role]
            if verdicts[role]:
                self._carried[role] = 0
            elif (
                frame is not None
                and self.last_values[role]  # the last tick's speech, attributed or carried
                and not frame.speech
                and self._carried[role] < tuning.carry_frames
                and frame.voice_prob >= tuning.carry_probability
                and frame.level_dbfs >= frame.floor_dbfs + tuning.carry_floor_db
            ):
                self._carried[role] += 1
                verdicts[role] = True
                if self.attributor.remembers(role):
                    self._carried_steps[role].add(self.attributor.steps - 1)

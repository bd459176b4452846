"""Cheaper stand-ins for aiortc functions on its per-packet path, installed on request only.

aiortc reads the wall clock through ``datetime`` for every RTP packet (once per packet
received, twice per packet sent), and its delay-based bandwidth estimator walks a 1 ms bucket
array and a Python ``min`` loop per sample. The replacements here give the same values for a
fraction of the CPU; tests/test_forward.py compares each with aiortc's original.

Nothing is patched on import. ``install()`` patches aiortc's clock for the whole process, so
it is called where media actually runs in this process (``media.relay.call.prepare_process``:
an in-process ``Call``, a media worker at start, the load generator), never by merely
importing ``server.app`` or ``media``: a server whose calls all run in worker processes keeps
aiortc exactly as shipped. The estimator parts are applied per estimator, by the forwarding
receiver (``media.aiortc_compat.forwarding``), to the estimators it feeds.

These are optimisations, not features: when the installed aiortc no longer matches what the
replacements were checked against, ``install()`` logs why and leaves aiortc alone, and a
transcoding call runs on aiortc's own functions. Forwarding refuses to start instead
(``media.aiortc_compat.guard.check_internals`` includes ``check_speed``), as before.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import clock as aiortc_clock
from aiortc import rate as aiortc_rate

from .pin import missing, source, version_problems

log = logging.getLogger("rapport.media.aiortc_compat")

# ---------------------------------------------------------------------------- clock
_NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 (NTP) to 1970-01-01 (Unix)
ORIGINAL_CLOCK: dict[str, Callable[[], int]] = {
    "current_ms": aiortc_clock.current_ms,
    "current_ntp_time": aiortc_clock.current_ntp_time,
}


def fast_current_ms() -> int:
    """``aiortc.clock.current_ms``: milliseconds since the NTP epoch."""
    return time.time_ns() // 1_000_000 + _NTP_EPOCH_OFFSET_S * 1000


def fast_current_ntp_time() -> int:
    """``aiortc.clock.current_ntp_time``: 32.32 fixed-point NTP time, microsecond steps."""
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    return ((seconds + _NTP_EPOCH_OFFSET_S) << 32) | ((ns // 1000) << 32) // 1_000_000


# ---------------------------------------------------------------------------- estimator
class FastRateCounter:
    """aiortc's ``RateCounter`` (bytes over a sliding window of ``window_size`` ms) with the
    same results, minus its per-millisecond bucket loop: it keeps one entry per sample.

    aiortc's counter clears one 1 ms bucket per loop iteration whenever time moves on, so
    at one sample per video frame each call walks ~33 buckets, twice per frame.
    """

    def __init__(self, window_size: int, scale: int = 8000) -> None:
        self._window_size = window_size
        self._scale = scale
        self.reset()

    def reset(self) -> None:
        self._samples: deque[tuple[int, int]] = deque()
        self._origin_ms: int | None = None
        self._count = 0
        self._value = 0

    def _erase_old(self, now_ms: int) -> None:
        new_origin_ms = now_ms - self._window_size + 1
        if self._origin_ms is not None and self._origin_ms < new_origin_ms:
            self._origin_ms = new_origin_ms
            samples = self._samples
            while samples and samples[0][0] < new_origin_ms:
                _, value = samples.popleft()
                self._count -= 1
                self._value -= value

    def add(self, value: int, now_ms: int) -> None:
        if self._origin_ms is None:
            self._origin_ms = now_ms
        else:
            self._erase_old(now_ms)
        self._samples.append((now_ms, value))
        self._count += 1
        self._value += value

    def rate(self, now_ms: int) -> int | None:
        if self._origin_ms is not None:
            self._erase_old(now_ms)
            active_window_size = now_ms - self._origin_ms + 1
            if self._count > 0 and active_window_size > 1:
                return round(self._scale * self._value / active_window_size)
        return None


def speed_up_estimator(estimator: Any) -> None:
    """Swap the two hot loops of an aiortc ``RemoteBitrateEstimator`` for equivalents."""
    counter = estimator.incoming_bitrate
    if isinstance(counter, aiortc_rate.RateCounter):
        estimator.incoming_bitrate = FastRateCounter(counter._window_size, counter._scale)
    overuse = estimator.estimator
    history: list[float] = overuse.ts_delta_hist

    def update_min_frame_period(ts_delta: float) -> float:
        """``OveruseEstimator.update_min_frame_period`` with the minimum taken in C."""
        if len(history) >= aiortc_rate.MIN_FRAME_PERIOD_HISTORY_LENGTH:
            del history[0]
        min_frame_period = min(ts_delta, min(history)) if history else ts_delta
        history.append(ts_delta)
        return min_frame_period

    overuse.update_min_frame_period = update_min_frame_period


# ---------------------------------------------------------------------------- checks
def check_speed() -> list[str]:
    """What no longer matches the aiortc functions these replacements stand in for."""
    problems: list[str] = []
    for name, needle in (
        ("current_ms", "int(delta.total_seconds() * 1000)"),
        ("current_ntp_time", "datetime_to_ntp(current_datetime())"),
    ):
        original = ORIGINAL_CLOCK.get(name)
        if original is None or needle not in source(original):
            problems.append(f"aiortc.clock.{name} changed")
    if abs(fast_current_ms() - ORIGINAL_CLOCK["current_ms"]()) > 50:
        problems.append("aiortc.clock.current_ms disagrees with its replacement")
    if abs(fast_current_ntp_time() - ORIGINAL_CLOCK["current_ntp_time"]()) > (1 << 32) // 20:
        problems.append("aiortc.clock.current_ntp_time disagrees with its replacement")
    estimator = aiortc_rate.RemoteBitrateEstimator()
    counter = getattr(estimator, "incoming_bitrate", None)
    if type(counter) is not aiortc_rate.RateCounter or not all(
        hasattr(counter, a) for a in ("_window_size", "_scale")
    ):
        problems.append("RemoteBitrateEstimator.incoming_bitrate is no longer a RateCounter")
    counter_source = source(aiortc_rate.RateCounter)
    problems += missing(
        "RateCounter",
        ("new_origin_ms = now_ms - self._window_size + 1", counter_source),
        ("active_window_size = now_ms - self._origin_ms + 1", counter_source),
        ("return round(self._scale * self._total.value / active_window_size)", counter_source),
    )
    overuse = getattr(estimator, "estimator", None)
    period = source(aiortc_rate.OveruseEstimator.update_min_frame_period)
    if (
        type(overuse) is not aiortc_rate.OveruseEstimator
        or not isinstance(getattr(overuse, "ts_delta_hist", None), list)
        or "self.ts_delta_hist.pop(0)" not in period
        or "min_frame_period = self.update_min_frame_period(" not in source(overuse.update)
        or getattr(aiortc_rate, "MIN_FRAME_PERIOD_HISTORY_LENGTH", None) != 60
    ):
        problems.append("OveruseEstimator.update_min_frame_period changed")
    return problems


# ---------------------------------------------------------------------------- install
_state: dict[str, bool] = {}


def install() -> bool:
    """Patch aiortc's clock with the fast equivalents; True when they are in place.

    Idempotent. On a mismatched aiortc it logs once and returns False, leaving aiortc as
    shipped: a transcoding relay must not fail because an optimisation no longer applies.
    """
    if "installed" in _state:
        return _state["installed"]
    problems = version_problems() + check_speed()
    if problems:
        log.warning("aiortc speed patches not installed: %s", "; ".join(problems))
        _state["installed"] = False
        return False
    aiortc_clock.current_ms = fast_current_ms
    aiortc_clock.current_ntp_time = fast_current_ntp_time
    _state["installed"] = True
    return True


__all__ = [
    "ORIGINAL_CLOCK",
    "FastRateCounter",
    "check_speed",
    "fast_current_ms",
    "fast_current_ntp_time",
    "install",
    "speed_up_estimator",
]

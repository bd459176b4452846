"""Per-socket message limits and per-identity connection limits.

Three layers, because each catches what the others miss:

* a token bucket smooths short bursts (50/s, burst 100): a person clicking fast is fine;
* a sliding window bounds messages *and bytes* in any ``window_s`` (10 s): a bucket alone
  lets a sender push 50 messages of 64 KiB every second forever, 3 MiB/s of JSON parsing;
* refused and oversized messages are *strikes*, counted in the same sliding window and never
  reset by an accepted message (the old counter reset on every accepted one, so a flood that
  the bucket let through now and then was never closed): ``max_strikes`` in the window closes
  the socket.

Normal traffic (stats every 2 s, pings, agenda typing, an offer now and then) stays far below
every bound; ``tests/test_limits.py`` replays such a session against them.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 64 * 1024
    messages_per_second: float = 50.0
    burst: int = 100
    #: The sliding window the message, byte and strike bounds apply to.
    window_s: float = 10.0
    window_messages: int = 300
    window_bytes: int = 2 * 1024 * 1024
    #: Refused or oversized messages in one window that close the socket: a client that keeps
    #: flooding after being told is not a person at a keyboard.
    max_strikes: int = 300
    # How long an in-call seat is held after its socket drops without `leave`: a network blip,
    # a reload or a server restart must not turn into "left" and a second admission.
    reconnect_grace_s: float = 60.0


class Verdict(StrEnum):
    ACCEPT = "accept"
    TOO_LARGE = "too_large"  # refused: one message over max_message_bytes
    RATE = "rate"  # refused: the burst bucket is empty
    WINDOW = "window"  # refused: the window's message or byte budget is spent
    CLOSE = "close"  # refused, and the strikes in the window reached max_strikes


@dataclass
class TokenBucket:
    rate: float
    capacity: float
    tokens: float = field(default=-1.0)
    stamp: float | None = None  # the first take's clock, so any clock (tests') works

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        elapsed = 0.0 if self.stamp is None else max(0.0, now - self.stamp)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SocketLimiter:
    """One socket's limits: ``check`` every inbound frame, act on the verdict."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bucket = TokenBucket(limits.messages_per_second, float(limits.burst))
        self._accepted: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self._strikes: deque[float] = deque()
        self.refused = 0  # over the socket's life, for the error text and tests

    def _evict(self, now: float) -> None:
        horizon = now - self.limits.window_s
        while self._accepted and self._accepted[0][0] <= horizon:
            self._bytes -= self._accepted.popleft()[1]
        while self._strikes and self._strikes[0] <= horizon:
            self._strikes.popleft()

    @property
    def strikes(self) -> int:
        return len(self._strikes)

    def check(self, size: int, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        self._evict(now)
        limits = self.limits
        verdict = Verdict.ACCEPT
        if size > limits.max_message_bytes:
            verdict = Verdict.TOO_LARGE
        elif (
            len(self._accepted) >= limits.window_messages
            or self._bytes + size > limits.window_bytes
        ):
            verdict = Verdict.WINDOW
        elif not self.bucket.take(now):
            verdict = Verdict.RATE
        if verdict is Verdict.ACCEPT:
            self._accepted.append((now, size))
            self._bytes += size
            return verdict
        self.refused += 1
        self._strikes.append(now)
        return Verdict.CLOSE if len(self._strikes) >= limits.max_strikes else verdict

    def describe(self) -> str:
        """The limits in words, for the error that closes a flooding socket."""
        limits = self.limits
        return (
            f"at most {limits.window_messages} messages and "
            f"{limits.window_bytes // 1024} KiB in any {limits.window_s:g} s, "
            f"{limits.max_message_bytes // 1024} KiB per message"
        )


class ConnectLimiter:
    """Socket opens per identity: a small token bucket each, so a page (or a script) that
    reconnects in a tight loop is refused instead of costing a database round trip, a room
    join and an audit row every time. Buckets are kept for the most recent ``max_keys``
    identities only, so the table cannot grow without bound."""

    def __init__(self, capacity: int = 20, per_second: float = 1 / 3, max_keys: int = 10_000):
        self.capacity = capacity
        self.per_second = per_second
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, identity: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(identity, None)
        if bucket is None:
            bucket = TokenBucket(self.per_second, float(self.capacity))
        self._buckets[identity] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket.take(now)

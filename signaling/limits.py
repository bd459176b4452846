"""Per-socket message limits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 64 * 1024
    messages_per_second: float = 50.0
    burst: int = 100
    # After this many rate-limited messages in a row the socket is closed: a client that keeps
    # flooding after being told is not a person at a keyboard.
    max_strikes: int = 500
    # How long an in-call seat is held after its socket drops without `leave`: a network blip,
    # a reload or a server restart must not turn into "left" and a second admission.
    reconnect_grace_s: float = 60.0


@dataclass
class TokenBucket:
    rate: float
    capacity: float
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

"""Sign-in throttling, per address and per account, in memory.

Each attempt costs an argon2 verification, so unthrottled sign-ins are both a password-guessing
channel and a way to burn the server's CPU. Limits live in process memory: one server process
serves a practice, and a restart forgetting them costs an attacker nothing worth having.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

# Failed sign-ins written to the audit log per account and hour: enough to see an attack,
# bounded so that a flood of wrong passwords cannot grow the database without limit.
AUDIT_FAILURES_PER_ACCOUNT = "5 per hour"


class LoginThrottle:
    def __init__(self, per_address: str, per_account: str) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._per_address = parse(per_address)
        self._per_account = parse(per_account)
        self._audit = parse(AUDIT_FAILURES_PER_ACCOUNT)

    async def _retry_after(self, item: RateLimitItem, *keys: str) -> int:
        stats = await self._limiter.get_window_stats(item, *keys)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def attempt(self, address: str, account: str) -> int | None:
        """Count one sign-in attempt; the seconds to wait if it is over a limit, else None.

        Every attempt counts, successful or not: the cost to the server is the same, and a
        guesser who eventually succeeds must not have had unlimited tries.
        """
        if not await self._limiter.hit(self._per_address, "login-address", address):
            return await self._retry_after(self._per_address, "login-address", address)
        if not await self._limiter.hit(self._per_account, "login-account", account):
            return await self._retry_after(self._per_account, "login-account", account)
        return None

    async def audit_failure(self, account: str) -> bool:
        """Whether this failed sign-in still fits the account's audit budget."""
        return await self._limiter.hit(self._audit, "login-audit", account)

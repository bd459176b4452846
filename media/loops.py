"""The event loop of Rapport's processes: which one, and how late it runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from media.stats import percentile


def use_uvloop() -> bool:
    """Run on uvloop when it is installed (uvicorn[standard] brings it), as the server does.

    Its datagram and timer paths are cheaper than asyncio's own loop, and a media process is
    mostly datagrams and timers: ``rapport bench``, N=4, two media workers, back to back:
    server CPU 0.70-0.72 cores on asyncio's loop, 0.60-0.64 on uvloop.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency of uvicorn[standard]
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


class LoopLagSampler:
    """How late the event loop wakes a sleeping task: a direct read of overload.

    One sampler for every process that reports it: the server (admin health, Prometheus),
    each media worker, and the bench's server child (at a finer interval).
    """

    def __init__(
        self,
        interval_s: float,
        keep: int,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.samples: deque[float] = deque(maxlen=keep)
        self._on_sample = on_sample
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.perf_counter() - started - self.interval_s)
            self.samples.append(lag)
            if self._on_sample is not None:
                self._on_sample(lag)

    def p99_ms(self) -> float:
        """The p99 lag by the one percentile definition (``media.stats``); 0 before any sample."""
        p99 = percentile(self.samples, 0.99)
        return 0.0 if p99 is None else round(p99 * 1000, 2)

    def max_ms(self) -> float:
        return round(max(self.samples, default=0.0) * 1000, 2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

"""The event loop media processes run on."""

from __future__ import annotations

import asyncio


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

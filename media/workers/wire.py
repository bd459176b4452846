"""Framing between the server process and its media worker processes.

Each message is a 4-byte big-endian length and a pickle. Both ends are Rapport's own code on
one machine, joined by a socketpair that nothing else can reach, so pickle is safe here and
the cheapest way to ship aiortc's stats objects and raw PCM. It must never be used on a
socket that anything outside the server's own process tree can connect to.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 32 << 20  # far above any stats report; a bigger length means corruption


class WireError(RuntimeError):
    """The other end sent something that is not a message of this protocol."""


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> Any:
    """The next message; raises ``asyncio.IncompleteReadError`` when the other end is gone."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes")
    return pickle.loads(await reader.readexactly(size))

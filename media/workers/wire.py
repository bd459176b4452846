"""Framing between the server process and its media worker processes.

Each message is a 4-byte big-endian length and a pickle of one of ``messages.MESSAGES``.
Both ends are Rapport's own code on one machine, joined by a socketpair that nothing else can
reach, so pickle is safe here and the cheapest way to ship aiortc's stats objects and raw
PCM. It must never be used on a socket that anything outside the server's own process tree
can connect to.

Two kinds of failure on receive, because they call for different responses:

- ``BadMessage``: a frame arrived whole but is not a message of the protocol (it does not
  unpickle, or it is some other object). The stream is still in step, so the reader logs it
  and reads on: one bad frame must not cost a worker and every call on it.
- ``WireError`` (the base): the framing itself is broken (an impossible length), so nothing
  after it can be trusted and the connection has to go.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import cast

from .messages import MESSAGES, Message

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 32 << 20  # far above any stats report; a bigger length means corruption


class WireError(RuntimeError):
    """The other end broke the framing; the connection cannot be read any further."""


class BadMessage(WireError):
    """One whole frame that is not a protocol message; the frames after it are still good."""


def encode(message: Message) -> bytes:
    """Refuses anything but a protocol message, so a mistake shows up at the sender."""
    if not isinstance(message, MESSAGES):
        raise TypeError(f"not a media worker message: {type(message).__name__}")
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    """One frame's body as a message, or ``BadMessage`` saying what it was instead."""
    try:
        message = pickle.loads(body)
    except Exception as exc:  # garbage can fail in any of pickle's many ways
        raise BadMessage(
            f"undecodable frame of {len(body)} bytes ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(message, MESSAGES):
        raise BadMessage(f"unknown message type {type(message).__qualname__}")
    return cast(Message, message)  # MESSAGES is Message's members, checked just above


async def read(reader: asyncio.StreamReader) -> Message:
    """The next message; raises ``asyncio.IncompleteReadError`` when the other end is gone,
    ``BadMessage`` for a frame to skip and ``WireError`` for a stream to abandon."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {size} bytes (limit {MAX_MESSAGE_BYTES})")
    return decode(await reader.readexactly(size))

"""Waiting for conditions that other tasks, threads and processes bring about.

One helper instead of a hand-rolled loop per file, so every wait in the suite has the same
semantics: the condition is checked first (no needless sleep when it already holds), a
truthy result is returned to the caller (so a wait can hand back the thing it waited for),
and a timeout raises ``TimeoutError`` with a message saying what was awaited.

A check returns the value waited for, or something falsy (``None``, ``False``, an empty
collection) while it is not there yet; the value returned is the check's result type with
``None`` removed, since a truthy result is never ``None``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

Message = str | Callable[[], str] | None


def _describe(message: Message, timeout: float) -> str:
    text = message() if callable(message) else message
    return f"{text or 'condition not reached'} (waited {timeout:g} s)"


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    message: Message = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None],
    timeout: float = ...,
    interval: float = ...,
    message: Message = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = None,
) -> T:
    """Poll ``check`` (a predicate, or an async check) until its result is truthy.

    Returns the truthy value. ``message`` may be a callable so the failure can describe the
    state at the time of the timeout rather than at the time of the call.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(_describe(message, timeout))
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = None,
) -> T:
    """``eventually`` for code that runs outside an event loop (fixture set-up, subprocesses)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(_describe(message, timeout))
        time.sleep(interval)

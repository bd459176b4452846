"""A cap on HTTP request bodies, enforced before anything buffers them.

FastAPI reads a whole body into memory before validating it, so without a cap one 50 MB POST
to any JSON route cost the server a few hundred MB. The declared Content-Length is checked
first; bodies without one (chunked) are counted as they stream in.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-stream to stop whatever is reading the body."""


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"The request body is too large (the limit is {self.max_bytes // 1024} KiB)."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await JSONResponse({"detail": self._detail()}, 413)(scope, receive, send)
                    return
        received = 0
        started = refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    # Answer here, whatever the app then makes of the error below.
                    refused = True
                    await JSONResponse({"detail": self._detail()}, 413)(scope, receive, send)
                if received > self.max_bytes:
                    raise BodyTooLarge(413, self._detail())
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out already; drop the app's own error response
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Exception:
            # Middlewares may wrap the error (task groups); once answered, it is handled.
            if not refused:
                raise

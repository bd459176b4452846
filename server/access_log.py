"""The access log: one line per HTTP request and per WebSocket connection.

Paths are logged as their route template (``/join/{token}``), never as requested: invite and
setup links carry their token in the path, and a query string may carry anything. A path no
route matches is logged as ``<unmatched>`` for the same reason.

4xx lines are info (a wrong password or a stale link is normal), 5xx are errors carrying the
exception's traceback as a field of the same line, so one line says what failed, where and for
which request. Each request has an id (the caller's ``X-Request-ID`` if it looks like one, else
a new one), returned in the response's ``X-Request-ID`` and bound to every line logged while
the request runs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id_var
from .ops import Metrics

log = logging.getLogger("rapport.access")

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED = "<unmatched>"
_SERVER_ERROR = b'{"detail":"Internal server error"}'


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``UNMATCHED``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if type(route).__name__ == "Mount":
        return f"{path}/{{path}}"
    return path or "/"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            text: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class AccessLog:
    """Pure ASGI (no response buffering, WebSocket upgrades included); outermost of ours, so
    its duration covers the other middlewares and a crash anywhere inside is caught here."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status: int | None = None
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def tracked_send(message: Message) -> None:
            nonlocal status
            match message["type"]:
                case "http.response.start":
                    status = int(message["status"])
                    message = {**message, "headers": [*message.get("headers", ()), header]}
                case "websocket.accept":
                    status = 101
                    message = {**message, "headers": [*message.get("headers", ()), header]}
                case "websocket.http.response.start":
                    status = int(message["status"])
                case "websocket.close" if status is None:
                    status = 403  # closed before accepting: the server answers 403
            await send(message)

        exc: BaseException | None = None
        try:
            await self.app(scope, receive, tracked_send)
        except Exception as error:
            exc = error
            if kind == "http" and status is None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"cache-control", b"no-store"),
                            (b"x-content-type-options", b"nosniff"),
                            header,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _SERVER_ERROR})
            status = 500
        finally:
            duration = time.perf_counter() - started
            method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
            route = route_template(scope)
            final = status if status is not None else (500 if kind == "http" else 1006)
            self.metrics.observe_request(method, route, final, duration)
            fields = {
                "event": "access",
                "method": method,
                "route": route,
                "status": final,
                "duration_ms": round(duration * 1000, 1),
            }
            message = "%s %s %s"
            if final >= 500:
                log.error(message, method, route, final, extra=fields, exc_info=exc)
            else:
                log.info(message, method, route, final, extra=fields)
            request_id_var.reset(token)

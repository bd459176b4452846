"""Structured logging. Records carry ids, never client names or message content.

One JSON object per line (``RAPPORT_LOG_JSON``, on by default), uvicorn's own lines included,
so an operator's log pipeline never has to stitch a multi-line traceback back together: an
exception is the ``exc`` field of the line that reports it.

Lines about a session carry its id and the role of the person whose socket caused them, without
every call site passing them: the WebSocket handler binds them in context variables, which
asyncio copies into every task that socket starts. The access log binds the request id the
same way, so a 500's traceback and the lines logged on the way share it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("rapport_request_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("rapport_session_id", default=None)
role_var: ContextVar[str | None] = ContextVar("rapport_role", default=None)


def bind_session(session_id: str, role: str) -> None:
    """Tag every line logged from here on in this context (a socket's task) with the session."""
    session_id_var.set(session_id)
    role_var.set(role)


def pseudonym(value: str) -> str:
    """A stable stand-in for an email in logs: repeated failures for one account line up,
    the address itself is not written."""
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:16]


# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)
_CONTEXT = (("request_id", request_id_var), ("session_id", session_id_var), ("role", role_var))


def _context(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, var in _CONTEXT:
        value = var.get()
        if value is not None:
            fields[key] = value
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _context(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None:
                entry["exc_type"] = type(exc).__name__
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """For a developer's terminal: the same fields, as ``key=value`` after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _context(record).items())
        if not fields:
            return text
        head, sep, tail = text.partition("\n")
        return f"{head} [{fields}]{sep}{tail}"


def formatter(as_json: bool) -> logging.Formatter:
    return JsonFormatter() if as_json else PlainFormatter()


def configure(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiortc/aioice are chatty at INFO and log peer addresses; keep them at warnings.
    for noisy in ("aiortc", "aioice"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # At debug, the websockets protocol logs every frame's text (chat, agenda): never below info.
    logging.getLogger("websockets").setLevel(socket_log_level(level))
    # Python warnings (a deprecation in a dependency) become log lines, not stray text.
    logging.captureWarnings(True)


class DropUvicornConnectionLines(logging.Filter):
    """uvicorn logs each WebSocket as ``"WebSocket /ws/join/<token>" [accepted]`` (the invite
    token in clear) and "connection open/closed" lines; the access log says the same by route
    template, so these are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (
            msg.startswith('%s - "WebSocket ') or msg in ("connection open", "connection closed")
        )


def socket_log_level(level: str) -> str:
    """The level for loggers that carry WebSocket frames: ``RAPPORT_LOG_LEVEL=debug`` must not
    write what people type (uvicorn hands the websockets protocol its ``uvicorn.error`` logger,
    which then logs every frame, chat text included, at debug)."""
    wanted = logging.getLevelName(level.upper())
    return "INFO" if isinstance(wanted, int) and wanted < logging.INFO else level.upper()


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's ``log_config``: its lines go to our root handler (so they are JSON too); its
    access log is off, replaced by ``server.access_log`` (route templates, request ids)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"no_paths": {"()": DropUvicornConnectionLines}},
        "loggers": {
            "uvicorn": {"level": socket_log_level(level), "handlers": [], "propagate": True},
            "uvicorn.error": {
                "level": socket_log_level(level),
                "handlers": [],
                "propagate": True,
                "filters": ["no_paths"],
            },
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def emit_banner(lines: list[str], as_json: bool, **fields: Any) -> None:
    """What the operator must see at start (where to open Rapport, the setup link): plain text
    on a terminal, one JSON line when the output is collected as JSON."""
    if as_json:
        banner = logging.getLogger("rapport.banner")
        banner.setLevel(logging.INFO)  # shown even when RAPPORT_LOG_LEVEL=warning
        banner.info(" ".join(lines), extra=fields)
    else:
        print("\n" + "\n".join(f"  {line}" for line in lines) + "\n", flush=True)

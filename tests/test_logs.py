"""What an operator reads: `rapport serve`'s own output during a whole session.

A real server process (media workers included) in production logging (JSON). Every line it
writes must parse as JSON; the access log must show the 401, the 404 and the 500 with method,
route template, status and request id; the session's lifecycle must be there by session id; and
nothing that identifies the client or carries clinical text may appear anywhere.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.server_process import RapportServer, rapport_server_process
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
)
from tests.support import eventually

CLIENT_LABEL = "Quinn Halvorsen-7Q"
CLIENT_NAME = "Quinnie-Display-4K"
AGENDA_TEXT = "Grief about Marguerite since March"
WRONG_PASSWORD = "not-the-password-5521"


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[RapportServer]:
    env = {"RAPPORT_LOG_JSON": "true", "RAPPORT_MEDIA_WORKERS": "1"}
    with rapport_server_process(tmp_path, env) as server:
        yield server


def _lines(server: RapportServer) -> list[str]:
    return [line for line in server.log_path.read_text().splitlines() if line.strip()]


def _records(server: RapportServer) -> list[dict[str, Any]]:
    records = []
    for line in _lines(server):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of the server's output is not JSON: {line!r}")
    return records


def _access(server: RapportServer, status: int, route: str) -> dict[str, Any] | None:
    for record in _records(server):
        if record.get("event") == "access" and record.get("status") == status:
            if record.get("route") == route:
                return record
    return None


async def test_a_whole_session_logs_json_lines_an_operator_can_use(
    json_server: RapportServer,
) -> None:
    server = json_server
    email, password = server.users["therapist"]
    therapist = httpx.AsyncClient(base_url=server.base_url, timeout=10)
    anonymous = httpx.AsyncClient(base_url=server.base_url, timeout=10)
    try:
        # A failed sign-in (401), with the therapist's own email and a wrong password.
        failed = await anonymous.post(
            "/api/login", json={"email": email, "password": WRONG_PASSWORD}
        )
        assert failed.status_code == 401
        signed_in = await therapist.post("/api/login", json={"email": email, "password": password})
        assert signed_in.status_code == 200, signed_in.text

        created = await therapist.post("/api/sessions", json={"client_label": CLIENT_LABEL})
        assert created.status_code == 201, created.text
        session = created.json()
        session_id, token = session["id"], invite_token(session["invite_url"])

        t = await Participant.connect(
            f"{server.ws_url}/ws/sessions/{session_id}", login_cookie(therapist)
        )
        await t.send({"type": "join"})
        await t.expect("joined")
        c = await Participant.connect(f"{server.ws_url}/ws/join/{token}", new_client_cookie())
        await c.send({"type": "join", "display_name": CLIENT_NAME})
        await t.send({"type": "admit", "participant_id": await next_waiting(t)})
        await c.expect("admitted")
        await t.send({"type": "agenda_add", "text": AGENDA_TEXT})
        await c.expect("agenda")
        await t.send({"type": "end"})
        await c.expect("ended")
        for p in (t, c):
            try:
                await p.close()
            except websockets.ConnectionClosed:
                pass

        # A 404 whose path carries a token-like string and a query string.
        missing = await anonymous.get(f"/no/such/{token}?invite={token}")
        assert missing.status_code == 404
        # A 500 from a real fault: a corrupt row (a status no version ever wrote).
        other = await therapist.post("/api/sessions", json={"client_label": "corrupt me"})
        assert other.status_code == 201, other.text
        broken_id = other.json()["id"]
        db_path = server.database_url.split("///", 1)[1]
        with sqlite3.connect(db_path) as db:
            db.execute("UPDATE sessions SET status = 'melted' WHERE id = ?", (broken_id,))
        crashed = await therapist.get(
            f"/api/sessions/{broken_id}", headers={"X-Request-ID": "op-trace-500"}
        )
        assert crashed.status_code == 500
        assert crashed.headers["x-request-id"] == "op-trace-500"
        assert "Traceback" not in crashed.text
    finally:
        await therapist.aclose()
        await anonymous.aclose()

    # Access lines: method, route template, status, duration and request id.
    unauthorised = await eventually(
        lambda: _access(server, 401, "/api/login"), timeout=10, message="401 access line"
    )
    assert unauthorised["method"] == "POST" and unauthorised["level"] == "info"
    assert unauthorised["request_id"] == failed.headers["x-request-id"]
    not_found = await eventually(
        lambda: _access(server, 404, "<unmatched>"), timeout=10, message="404 access line"
    )
    assert not_found["method"] == "GET" and not_found["request_id"]
    error = await eventually(
        lambda: _access(server, 500, "/api/sessions/{session_id}"),
        timeout=10,
        message="500 access line",
    )
    assert error["method"] == "GET" and error["level"] == "error"
    assert error["request_id"] == "op-trace-500"
    assert "LookupError" in error["exc"] and "Traceback" in error["exc"]
    assert isinstance(error["duration_ms"], int | float)
    # The socket upgrades are logged by template too.
    sockets = await eventually(
        lambda: _access(server, 101, "/ws/join/{token}"), timeout=10, message="WebSocket line"
    )
    assert sockets["method"] == "WEBSOCKET" and sockets["session_id"] == session_id

    # Lifecycle, by session id (and the role whose socket caused it).
    def events() -> dict[str, dict[str, Any]] | None:
        found = {
            r["event"]: r
            for r in _records(server)
            if r.get("session_id") == session_id and r.get("event", "access") != "access"
        }
        wanted = {"session_created", "client_waiting", "client_admitted", "session_ended"}
        return found if wanted <= found.keys() else None

    lifecycle = await eventually(events, timeout=10, message="lifecycle lines")
    about = [r for r in _records(server) if session_id in r["msg"]]
    assert all(r.get("session_id") == session_id for r in about), about
    assert lifecycle["client_waiting"]["role"] == "client"
    assert lifecycle["client_admitted"]["role"] == "therapist"
    failed_login = [r for r in _records(server) if r.get("logger") == "rapport.auth"]
    assert [r["event"] for r in failed_login] == ["login_failed"]
    assert isinstance(failed_login[0]["user_id"], int)

    # Nothing identifying or clinical, anywhere in the output.
    text = server.log_path.read_text()
    for secret in (token, CLIENT_LABEL, CLIENT_NAME, AGENDA_TEXT, WRONG_PASSWORD, password, email):
        assert secret not in text, f"{secret!r} appears in the server's output"
    # Every line is JSON (checked last, once the process has written everything above).
    assert len(_records(server)) > 20

"""The admin's incidents outlive a restart (kept in the database), and the audit log names
staff by name and clients only as "Client" (never the therapist's label for them)."""

from __future__ import annotations

from typing import Any

import httpx

from server.app import create_app
from server.audit import record_now
from server.db import Database
from server.quality_hub import ParticipantQuality, QualityHub
from tests.conftest import PASSWORD, InProcessApp
from tests.support import eventually


async def _incidents(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    res = await http.get("/api/admin/incidents")
    assert res.status_code == 200, res.text
    incidents: list[dict[str, Any]] = res.json()["incidents"]
    return incidents


async def test_incidents_are_listed_after_a_restart(
    api: InProcessApp, admin: httpx.AsyncClient
) -> None:
    hub: QualityHub = api.app.state.quality
    pq = ParticipantQuality()
    await hub._transition("sess-one", "client", pq, "poor")  # raised where the sampler raises it
    pq.label = "poor"
    await hub._transition("sess-one", "client", pq, "good")
    hub.on_media_restarted("sess-two", "worker_restarted", "media worker 0 (pid 4242) exited")

    async def three() -> list[dict[str, Any]] | None:
        found = await _incidents(admin)
        return found if len(found) == 3 else None

    before = await eventually(three, timeout=10, message="three incidents listed")
    assert [(i["session_id"], i["from"], i["to"], i["kind"]) for i in before] == [
        ("sess-two", None, "lost", "worker_restarted"),
        ("sess-one", "poor", "good", "quality"),
        ("sess-one", None, "poor", "quality"),
    ]

    # A new server process on the same database: its memory is empty, the list is not.
    again = create_app(api.settings)
    async with again.router.lifespan_context(again):
        fresh: QualityHub = again.state.quality
        assert not fresh.incidents
        restarted = InProcessApp(api.settings.public_url, api.settings, again)
        async with restarted.client() as http:
            res = await http.post(
                "/api/login", json={"email": "ops@example.org", "password": PASSWORD}
            )
            assert res.status_code == 200, res.text
            after = await _incidents(http)
    assert after == before
    assert "pid 4242" in after[0]["detail"]


async def test_audit_names_staff_and_never_client_labels(
    api: InProcessApp, therapist: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    created = await therapist.post("/api/sessions", json={"client_label": "Jordan Q."})
    assert created.status_code == 201, created.text
    session = created.json()
    # A client's action (as the room records one) and a deleted account's.
    database = Database(api.settings.database_url)
    await record_now(database, "client_waiting", "client:7", session["id"], "participant 7")
    await record_now(database, "login", "user:999", None, "")
    await database.dispose()

    res = await admin.get("/api/admin/audit", params={"limit": 1000})
    assert res.status_code == 200, res.text
    events = res.json()["events"]
    created_event = next(e for e in events if e["action"] == "session_created")
    assert created_event["actor"].startswith("user:")
    assert created_event["actor_name"] == "dr.t"
    logins = [e for e in events if e["action"] == "login"]
    assert {e["actor_name"] for e in logins} >= {"dr.t", "ops"}
    assert next(e for e in events if e["actor"] == "user:999")["actor_name"] == "A removed account"
    assert next(e for e in events if e["actor"] == "client:7")["actor_name"] == "Client"
    for event in events:
        assert "Jordan" not in event["actor_name"], event
        if event["actor"].startswith("client"):
            assert event["actor_name"] == "Client", event

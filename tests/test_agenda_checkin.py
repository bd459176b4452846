"""Shared agenda, balance sharing, check-in, summary, trend and exports."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from media import Role
from signaling.agenda import Agenda, AgendaError
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.media_helpers import FakeBrowser, PcmTrack, speech
from tests.signaling_helpers import (
    Participant,
    invite_token,
    login_cookie,
    new_client_cookie,
    next_waiting,
)


def test_agenda_rules() -> None:
    agenda = Agenda()
    first = agenda.add("  Sleep   since last week ", Role.THERAPIST)
    proposal = agenda.add("My sister", Role.CLIENT)
    assert first.text == "Sleep since last week" and first.accepted
    assert not proposal.accepted and proposal.proposed_by == Role.CLIENT
    agenda.accept(proposal.id)
    agenda.reorder([proposal.id, first.id])
    agenda.update(first.id, None, True)
    assert [i.id for i in agenda.items] == [proposal.id, first.id] and agenda.items[1].done
    with pytest.raises(AgendaError):
        agenda.reorder([first.id])
    with pytest.raises(AgendaError):
        agenda.add("   ", Role.THERAPIST)
    with pytest.raises(AgendaError):
        agenda.update(999, "x", None)
    again = Agenda.from_json(agenda.to_json())
    assert again == agenda
    assert again.add("next", Role.THERAPIST).id == 3


async def _room(
    server: LiveServer, therapist: httpx.AsyncClient, label: str = "R.K."
) -> tuple[dict[str, str], Participant, Participant, str]:
    """An admitted client who was kept out of the agenda while waiting."""
    session = (await therapist.post("/api/sessions", json={"client_label": label})).json()
    t = await Participant.connect(
        f"{server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await t.send({"type": "join"})
    await t.expect("joined")
    cookie = new_client_cookie()
    c = await Participant.connect(
        f"{server.ws_url}/ws/join/{invite_token(session['invite_url'])}", cookie
    )
    await c.send({"type": "join"})
    await c.expect("waiting")
    await c.send({"type": "agenda_add", "text": "sneaky"})
    assert (await c.error())["code"] == "not_admitted"
    assert not c.seen("agenda")
    await t.send({"type": "admit", "participant_id": await next_waiting(t)})
    await c.expect("admitted")
    await c.expect("agenda")
    return session, t, c, cookie


async def _agenda_where(
    p: Participant, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    while True:
        state = await p.expect("agenda")
        if predicate(state):
            return state


@NO_MEDIA_WORKER
@pytest.mark.both_databases
async def test_agenda_is_shared_live_and_stored(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await _room(live_server, therapist)
    await t.send({"type": "agenda_add", "text": "How the week went"})
    state = await _agenda_where(c, lambda s: len(s["items"]) == 1)
    assert state["items"][0]["text"] == "How the week went"
    await c.send({"type": "agenda_add", "text": "Talking to my sister"})
    state = await _agenda_where(t, lambda s: len(s["items"]) == 2)
    proposal = state["items"][1]
    assert proposal["proposed_by"] == "client" and not proposal["accepted"]

    # The client proposes; only the therapist curates.
    for message in [
        {"type": "agenda_accept", "item_id": proposal["id"]},
        {"type": "agenda_update", "item_id": proposal["id"], "done": True},
        {"type": "agenda_remove", "item_id": proposal["id"]},
        {"type": "homework", "text": "none!"},
        {"type": "share_balance", "on": True},
    ]:
        await c.send(message)
        assert (await c.error())["code"] == "forbidden"

    first = state["items"][0]["id"]
    await t.send({"type": "agenda_accept", "item_id": proposal["id"]})
    await t.send({"type": "agenda_reorder", "item_ids": [proposal["id"], first]})
    await t.send({"type": "agenda_update", "item_id": first, "done": True})
    await t.send({"type": "homework", "text": "Write down one good moment a day."})
    state = await _agenda_where(c, lambda s: s["homework"].startswith("Write"))
    assert [i["id"] for i in state["items"]] == [proposal["id"], first]
    assert state["items"][0]["accepted"] and state["items"][1]["done"]
    await t.send({"type": "agenda_reorder", "item_ids": [first]})
    assert "every agenda item" in (await t.error())["message"]

    await t.send({"type": "end"})
    assert (await c.expect("ended"))["checkin"] is True
    summary = (await therapist.get(f"/api/sessions/{session['id']}/summary")).json()
    assert summary["agenda"]["done"] == 1 and summary["agenda"]["total"] == 2
    assert summary["agenda"]["homework"] == "Write down one good moment a day."
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
@pytest.mark.both_databases
async def test_checkin_summary_trend_and_exports(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    totals = []
    for scores in (
        {"bond": 9, "goals": 8, "tasks": 9, "overall": 9},
        {"bond": 3, "goals": 7, "tasks": 8, "overall": 8},
    ):
        session, t, c, cookie = await _room(live_server, therapist, label="client-7")
        async with httpx.AsyncClient(
            base_url=live_server.url, headers={"Cookie": cookie}
        ) as client_http:
            token = invite_token(session["invite_url"])
            early = await client_http.post(f"/api/join/{token}/checkin", json=scores)
            assert early.status_code == 409  # not before the session ends
            await t.send({"type": "end"})
            await c.expect("ended")
            status = (await client_http.get(f"/api/join/{token}/checkin")).json()
            assert status["open"] and len(status["questions"]) == 4
            partial = await client_http.post(f"/api/join/{token}/checkin", json={"bond": 5})
            assert partial.status_code == 422
            done = await client_http.post(
                f"/api/join/{token}/checkin", json={**scores, "comment": "ok"}
            )
            assert done.status_code == 201
            again = await client_http.post(f"/api/join/{token}/checkin", json=scores)
            assert again.status_code == 409
        async with httpx.AsyncClient(
            base_url=live_server.url, headers={"Cookie": new_client_cookie()}
        ) as stranger:
            denied = await stranger.post(f"/api/join/{token}/checkin", json=scores)
            assert denied.status_code == 403
        totals.append(sum(scores.values()))
        await t.close()
        await c.close()

    summary = (await therapist.get(f"/api/sessions/{session['id']}/summary")).json()
    assert summary["checkin"]["total"] == totals[1] and summary["checkin"]["low"] is True
    assert [p["checkin_total"] for p in summary["trend"]] == totals
    assert [p["checkin_low"] for p in summary["trend"]] == [False, True]
    exported = await therapist.get(f"/api/sessions/{session['id']}/export")
    assert "attachment" in exported.headers["content-disposition"]
    assert exported.json()["checkin"]["bond"] == 3
    history = await therapist.get("/api/clients/history.csv", params={"label": "client-7"})
    rows = list(csv.DictReader(io.StringIO(history.text)))
    assert [int(r["checkin_total"]) for r in rows] == totals
    clients = (await therapist.get("/api/clients")).json()["clients"]
    assert clients[0] == {**clients[0], "label": "client-7", "sessions": 2}
    missing = await therapist.get("/api/clients/history.csv", params={"label": "nobody"})
    assert missing.status_code == 404


@NO_MEDIA_WORKER
@pytest.mark.both_databases
async def test_skipped_checkin_is_recorded_without_scores(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, cookie = await _room(live_server, therapist)
    await t.send({"type": "end"})
    await c.expect("ended")
    async with httpx.AsyncClient(base_url=live_server.url, headers={"Cookie": cookie}) as http:
        token = invite_token(session["invite_url"])
        assert (
            await http.post(f"/api/join/{token}/checkin", json={"skipped": True})
        ).status_code == 201
    summary = (await therapist.get(f"/api/sessions/{session['id']}/summary")).json()
    assert summary["checkin"]["skipped"] is True and summary["checkin"]["low"] is False
    await t.close()
    await c.close()


async def test_balance_is_shared_only_while_the_therapist_shares_it(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await _room(live_server, therapist)
    await t.start_media(FakeBrowser(audio=PcmTrack(speech(20.0), loop=True)))
    await c.start_media()
    await t.expect("signals", timeout=20)
    await t.send({"type": "share_balance", "on": True})
    shared = await c.expect("shared_balance", on=True, timeout=10)
    # A reloaded therapist tab learns that the client is seeing the bar.
    again = await Participant.connect(
        f"{live_server.ws_url}/ws/sessions/{session['id']}", login_cookie(therapist)
    )
    await again.send({"type": "join", "takeover": True})
    assert (await again.expect("joined"))["sharing_balance"] is True
    await t.close()
    t = again
    assert set(shared) == {"type", "on", "client_share", "client_share_5min"}
    await t.send({"type": "share_balance", "on": False})
    await c.expect("shared_balance", on=False, timeout=10)
    await t.send({"type": "end"})
    await c.expect("ended")
    assert not c.seen("signals") and not c.seen("speaking")
    await t.close()
    await c.close()


async def test_panel_preferences(therapist: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    defaults = (await therapist.get("/api/me/preferences")).json()
    assert defaults["target_low"] == 0.5 and defaults["target_high"] == 0.8
    assert defaults["therapist_monologue"] == {"on": True, "minutes": 3}
    changed = {**defaults, "target_low": 0.6, "share_below_band": {"on": False, "minutes": 5}}
    assert (await therapist.put("/api/me/preferences", json=changed)).status_code == 200
    assert (await therapist.get("/api/me/preferences")).json()["target_low"] == 0.6
    bad = await therapist.put(
        "/api/me/preferences", json={**defaults, "target_low": 0.9, "target_high": 0.5}
    )
    assert bad.status_code == 422
    assert (await admin.get("/api/me/preferences")).status_code == 403

"""In-call chat over real sockets (issue 13): both ways, from the waiting room to the therapist
only, never across sessions or threads, bounded, kept for the session (history on every
(re)join) and gone when it ends, never in the database or the server's log."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx

from media import Role
from signaling.chat import MAX_MESSAGES, MAX_WAITING_MESSAGES, ChatLog
from tests.conftest import NO_MEDIA_WORKER, LiveServer
from tests.server_process import (
    NO_MEDIA,
    THERAPIST_EMAIL,
    THERAPIST_PASSWORD,
    rapport_server_process,
)
from tests.signaling_helpers import Participant, invite_token, login_cookie, new_client_cookie
from tests.support import eventually


async def _session(therapist: httpx.AsyncClient, label: str = "J. Doe, Tuesdays") -> dict[str, Any]:
    response = await therapist.post("/api/sessions", json={"client_label": label})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


async def _therapist(ws_base: str, cookie: str, session_id: str) -> Participant:
    t = await Participant.connect(f"{ws_base}/ws/sessions/{session_id}", cookie)
    await t.send({"type": "join", "takeover": True})
    await t.expect("joined")
    return t


async def _waiting_with_history(
    ws_base: str, session: dict[str, Any], name: str | None, cookie: str | None = None
) -> tuple[Participant, list[dict[str, Any]]]:
    """A client in the waiting room, and the chat history it got on entering it."""
    c = await Participant.connect(
        f"{ws_base}/ws/join/{invite_token(session['invite_url'])}", cookie or new_client_cookie()
    )
    await c.expect("welcome")
    await c.send({"type": "join", **({"display_name": name} if name else {})})
    await c.expect("waiting")
    history = await c.expect("chat_history")
    messages: list[dict[str, Any]] = history["messages"]
    return c, messages


async def _waiting(
    ws_base: str, session: dict[str, Any], name: str | None, cookie: str | None = None
) -> Participant:
    c, _ = await _waiting_with_history(ws_base, session, name, cookie)
    return c


async def _lobby_ids(t: Participant, count: int) -> list[int]:
    while True:
        lobby = await t.expect("lobby")
        if len(lobby["waiting"]) == count:
            return [int(w["participant_id"]) for w in lobby["waiting"]]


async def _chat(sender: Participant, text: str, **extra: Any) -> None:
    await sender.send({"type": "chat", "text": text, **extra})


async def _quiet(p: Participant) -> None:
    """A round trip on ``p``'s socket: what the server sent it before the pong has arrived."""
    t = secrets.randbelow(1_000_000) / 1000
    await p.send({"type": "ping", "t": t})
    await p.expect("pong", t=t)


async def _admitted_pair(
    server: LiveServer, therapist: httpx.AsyncClient, name: str | None = "Robin"
) -> tuple[Participant, Participant, int]:
    """The therapist's socket and a client (named ``name``, with their participant id)
    admitted to a new session."""
    session = await _session(therapist)
    t = await _therapist(server.ws_url, login_cookie(therapist), session["id"])
    c = await _waiting(server.ws_url, session, name)
    (pid,) = await _lobby_ids(t, 1)
    await t.send({"type": "admit", "participant_id": pid})
    await c.expect("admitted")
    return t, c, pid


def _texts(p: Participant) -> list[str]:
    return [m["text"] for m in p.seen("chat_message")]


@NO_MEDIA_WORKER
async def test_chat_both_ways_with_names_times_and_receipts(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    t, c, pid = await _admitted_pair(live_server, therapist)
    assert (await c.expect("chat_history"))["messages"] == []

    await _chat(t, "How was your week?")
    got = await c.expect("chat_message")
    assert got["from_role"] == "therapist"
    assert got["from_name"] == "dr.t"  # the therapist's name, shown to the client
    assert got["participant_id"] is None  # thread ids are for the therapist only
    assert got["text"] == "How was your week?"
    assert got["at"].endswith("Z") or got["at"].endswith("+00:00")
    receipt = await t.expect("chat_message")
    assert receipt["id"] == got["id"] and receipt["participant_id"] == pid

    await _chat(c, "  Better, thanks.\r\nMostly.  ")
    got = await t.expect("chat_message", from_role="client")
    assert got["from_name"] == "Robin"
    assert got["text"] == "Better, thanks.\nMostly."  # stripped, one kind of line break
    assert got["participant_id"] == pid
    assert (await c.expect("chat_message", from_role="client"))["id"] == got["id"]
    assert got["id"] > receipt["id"]
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
async def test_the_clients_label_is_never_shown_to_the_client(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist, label="Jordan Doe (anxiety)")
    t = await _therapist(live_server.ws_url, login_cookie(therapist), session["id"])
    c = await _waiting(live_server.ws_url, session, None)  # no name chosen
    await _chat(c, "hello")
    to_therapist = await t.expect("chat_message")
    echo = await c.expect("chat_message")
    assert to_therapist["from_name"] == echo["from_name"] == "Client"
    await _chat(t, "Hi, I'll let you in in a moment")
    await c.expect("chat_message", from_role="therapist")
    await _quiet(c)
    assert "Jordan" not in str(c.inbox)
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
async def test_a_waiting_client_writes_to_the_therapist_only_and_sees_only_their_replies(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    t = await _therapist(live_server.ws_url, login_cookie(therapist), session["id"])
    a = await _waiting(live_server.ws_url, session, "Alex")
    (a_id,) = await _lobby_ids(t, 1)
    b_cookie = new_client_cookie()
    b = await _waiting(live_server.ws_url, session, "Stranger", b_cookie)
    ids = await _lobby_ids(t, 2)
    (b_id,) = [i for i in ids if i != a_id]

    await _chat(a, "Running 5 minutes late, sorry!")
    got = await t.expect("chat_message")
    assert got["participant_id"] == a_id and got["from_name"] == "Alex"
    await a.expect("chat_message")  # their own receipt

    # Two people waiting: the therapist must say whom the reply is for.
    await _chat(t, "No problem")
    error = await t.error()
    assert error["code"] == "invalid_message" and error["ref"] == "chat"
    assert "waiting room" in error["message"]

    await _chat(t, "No problem, see you soon", participant_id=a_id)
    assert (await a.expect("chat_message", from_role="therapist"))["text"] == (
        "No problem, see you soon"
    )
    await t.expect("chat_message", from_role="therapist")
    await _chat(b, "is anyone there")
    assert (await t.expect("chat_message", participant_id=b_id))["text"] == "is anyone there"
    await b.expect("chat_message")
    await _quiet(a)
    await _quiet(b)
    assert _texts(b) == []  # only their own receipt, already taken
    assert _texts(a) == []

    # A client cannot address anyone but the therapist.
    await _chat(b, "psst", participant_id=a_id)
    assert (await b.error())["code"] == "forbidden"

    # B reloads: its history is its own thread only.
    await b.close()
    b, history = await _waiting_with_history(live_server.ws_url, session, "Stranger", b_cookie)
    assert [m["text"] for m in history] == ["is anyone there"]
    # Alex is admitted: the waiting-room conversation comes along.
    await t.send({"type": "admit", "participant_id": a_id})
    await a.expect("admitted")
    admitted_history = await a.expect("chat_history")
    assert [m["text"] for m in admitted_history["messages"]] == [
        "Running 5 minutes late, sorry!",
        "No problem, see you soon",
    ]
    # The therapist's panel writes to the admitted client by default now.
    await _chat(t, "Welcome in")
    await a.expect("chat_message", text="Welcome in")
    await _quiet(b)
    assert "Welcome in" not in _texts(b)
    for p in (t, a, b):
        await p.close()


@NO_MEDIA_WORKER
async def test_a_waiting_room_allowance_and_messages_with_no_one_to_read_them(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    t = await _therapist(live_server.ws_url, login_cookie(therapist), session["id"])
    await _chat(t, "Anyone?")  # nobody has arrived yet
    error = await t.error()
    assert error["code"] == "invalid_message" and error["ref"] == "chat"
    assert "no one to send this to" in error["message"]
    await _chat(t, "To a stranger", participant_id=987654)
    error = await t.error()
    assert error["code"] == "unknown_participant" and error["ref"] == "chat"
    c = await Participant.connect(
        f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}",
        new_client_cookie(),
    )
    await c.expect("welcome")
    await _chat(c, "before joining")  # still on the device check
    error = await c.error()
    assert error["code"] == "not_joined" and error["ref"] == "chat"
    await c.send({"type": "join"})
    await c.expect("waiting")
    for i in range(MAX_WAITING_MESSAGES):
        await _chat(c, f"message {i}")
        await c.expect("chat_message", text=f"message {i}")
    await _chat(c, "one too many")
    error = await c.error()
    assert error["code"] == "rate_limited" and str(MAX_WAITING_MESSAGES) in error["message"]
    await _quiet(t)
    assert "one too many" not in _texts(t)
    assert len(_texts(t)) == MAX_WAITING_MESSAGES
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
async def test_a_client_cannot_see_chat_from_another_session(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    one, two = await _session(therapist), await _session(therapist)
    cookie = login_cookie(therapist)
    t1 = await _therapist(live_server.ws_url, cookie, one["id"])
    c1 = await _waiting(live_server.ws_url, one, "One")
    (pid,) = await _lobby_ids(t1, 1)
    await t1.send({"type": "admit", "participant_id": pid})
    await c1.expect("admitted")
    await _chat(c1, "session one secret")
    await t1.expect("chat_message")
    await _chat(t1, "session one reply")
    await c1.expect("chat_message", text="session one reply")

    # The same browser (same identity cookie) with the other session's link.
    t2 = await _therapist(live_server.ws_url, cookie, two["id"])
    assert (await t2.expect("chat_history"))["messages"] == []
    c2, history = await _waiting_with_history(live_server.ws_url, two, "One")
    assert history == []
    await _chat(t1, "still one")
    await c1.expect("chat_message", text="still one")
    await _quiet(c2)
    await _quiet(t2)
    assert "one" not in " ".join(_texts(c2) + _texts(t2))
    for p in (t1, c1, t2, c2):
        await p.close()


@NO_MEDIA_WORKER
async def test_length_cap_is_precise_and_html_is_plain_text(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    t, c, _pid = await _admitted_pair(live_server, therapist)

    longest = "é" * 2000  # characters, not bytes
    await _chat(c, f"\n {longest} \n")
    assert (await t.expect("chat_message"))["text"] == longest

    await _chat(c, "x" * 2001)
    error = await c.error()
    assert error["code"] == "invalid_message" and error["ref"] == "chat"
    assert "limited to 2000 characters" in error["message"] and "2001" in error["message"]
    assert "Value error" not in error["message"]
    await _chat(c, " \n\t ")
    error = await c.error()
    assert error["code"] == "invalid_message" and "empty" in error["message"]

    markup = '<b>bold</b> <img src=x onerror="alert(1)"> &amp; <script>x()</script>'
    await _chat(c, markup)
    got = await t.expect("chat_message", text=markup)  # byte for byte: no escaping, no stripping
    assert got["from_role"] == "client"
    await _quiet(t)
    assert _texts(t) == []  # the refused ones never reached the therapist
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
async def test_flood_control_applies_to_chat(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    t, c, _pid = await _admitted_pair(live_server, therapist, None)
    for i in range(200):  # the socket's burst is 100 messages
        await _chat(t, f"flood {i}")
    error = await t.expect("error", code="rate_limited")
    assert "Too many messages" in error["message"]
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
async def test_history_on_every_rejoin_and_gone_when_the_session_ends(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    cookie = login_cookie(therapist)
    t = await _therapist(live_server.ws_url, cookie, session["id"])
    client_cookie = new_client_cookie()
    c = await _waiting(live_server.ws_url, session, "Robin", client_cookie)
    (pid,) = await _lobby_ids(t, 1)
    await t.send({"type": "admit", "participant_id": pid})
    await c.expect("admitted")
    await _chat(t, "first")
    await c.expect("chat_message", text="first")
    await _chat(c, "second")
    await t.expect("chat_message", text="second")

    # The client's page reloads (socket dropped, same browser): history comes with admission.
    await c.ws.close()
    await t.expect("peer_state", role="client", reconnecting=True)
    c = await Participant.connect(
        f"{live_server.ws_url}/ws/join/{invite_token(session['invite_url'])}", client_cookie
    )
    await c.send({"type": "join", "display_name": "Robin"})
    await c.expect("admitted", rejoined=True)
    history = await c.expect("chat_history")
    assert [(m["from_role"], m["text"]) for m in history["messages"]] == [
        ("therapist", "first"),
        ("client", "second"),
    ]
    assert all(m["participant_id"] is None for m in history["messages"])
    # The therapist's too.
    await t.ws.close()
    t = await _therapist(live_server.ws_url, cookie, session["id"])
    history = await t.expect("chat_history")
    assert [m["text"] for m in history["messages"]] == ["first", "second"]
    assert {m["participant_id"] for m in history["messages"]} == {pid}

    room = live_server.app.state.rooms.get(session["id"])  # type: ignore[attr-defined]
    assert room is not None and len(room.chat) == 2
    await t.send({"type": "end"})
    await t.expect("ended")
    await c.expect("ended")
    assert len(room.chat) == 0  # nothing kept once the session is over
    await t.close()
    await c.close()


@NO_MEDIA_WORKER
async def test_chat_goes_with_the_room_when_everyone_has_left(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session = await _session(therapist)
    cookie = login_cookie(therapist)
    t = await _therapist(live_server.ws_url, cookie, session["id"])
    c = await _waiting(live_server.ws_url, session, "Robin")
    await _chat(c, "see you next time")
    await t.expect("chat_message")
    room = live_server.app.state.rooms.get(session["id"])  # type: ignore[attr-defined]
    await c.send({"type": "leave"})
    await t.send({"type": "leave"})
    await c.close()
    await t.close()

    async def unloaded() -> bool:
        return live_server.app.state.rooms.get(session["id"]) is None  # type: ignore[attr-defined]

    await eventually(unloaded, timeout=10, message="the room was not unloaded")
    assert len(room.chat) == 0
    t = await _therapist(live_server.ws_url, cookie, session["id"])
    assert (await t.expect("chat_history"))["messages"] == []
    await t.close()


def test_the_room_keeps_a_bounded_number_of_messages() -> None:
    log = ChatLog()
    for i in range(MAX_MESSAGES + 25):
        log.add(7 if i % 2 else 8, Role.CLIENT, "Client", f"m{i}")
    assert len(log) == MAX_MESSAGES
    kept = log.all()
    assert kept[0].text == "m25" and kept[-1].text == f"m{MAX_MESSAGES + 24}"
    assert all(e.participant_id == 7 for e in log.thread(7))
    assert [e.id for e in kept] == sorted(e.id for e in kept)


async def test_chat_text_never_reaches_the_database_or_the_log(tmp_path: Path) -> None:
    marker = f"zebra-{secrets.token_hex(6)}"
    env = {**NO_MEDIA, "RAPPORT_LOG_LEVEL": "debug", "RAPPORT_LOG_JSON": "true"}
    with rapport_server_process(tmp_path, env) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
            login = await http.post(
                "/api/login", json={"email": THERAPIST_EMAIL, "password": THERAPIST_PASSWORD}
            )
            assert login.status_code == 200, login.text
            session = await _session(http)
            t = await _therapist(server.ws_url, login_cookie(http), session["id"])
            c = await _waiting(server.ws_url, session, "Robin")
            await _chat(c, f"waiting {marker}")
            await t.expect("chat_message")
            (pid,) = await _lobby_ids(t, 1)
            await t.send({"type": "admit", "participant_id": pid})
            await c.expect("admitted")
            await _chat(t, f"therapist {marker}")
            await c.expect("chat_message", from_role="therapist")
            await _chat(c, f"client {marker}")
            await t.expect("chat_message", from_role="client")
            await _chat(c, f"too long {marker} " + "y" * 2100)
            await c.error()
            await c.send('{"type": "chat", "text": "' + marker + '", "bogus": 1}')
            await c.error()
            await t.send({"type": "end"})
            await t.expect("ended")
            await c.close()
            await t.close()
    _assert_nowhere_on_disk(tmp_path, marker)


def _assert_nowhere_on_disk(tmp_path: Path, marker: str) -> None:
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "rapport.db" in names and "server.log" in names, names
    assert (tmp_path / "server.log").stat().st_size > 0
    for path in files:
        data = path.read_bytes()
        assert marker.encode() not in data, f"chat text found in {path.name}"
        assert marker.encode("utf-16-le") not in data, f"chat text found in {path.name}"

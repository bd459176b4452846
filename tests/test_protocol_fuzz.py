"""Protocol fuzzing: whatever a participant sends, the room answers precisely and survives."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media import Role
from media.relay.ice import MediaConfig
from signaling import messages as m
from signaling.room import Member, Room
from tests.signaling_helpers import MemoryChannel
from tests.support import eventually

LONG = os.environ.get("RAPPORT_LONG_TESTS") == "1"
EXAMPLES = 400 if LONG else 40
ERROR_CODES = {v for k, v in vars(m.ErrorCode).items() if k.isupper()} | {"internal"}
CLIENT_MAY_SEE = {
    "welcome",
    "waiting",
    "admitted",
    "denied",
    "answer",
    "peer_state",
    "left",
    "ended",
    "replaced",
    "pong",
    "error",
    "agenda",
    "shared_balance",
    "quality",
}


class MemoryHooks:
    """Storage stand-in: the protocol state machine is under test here, not the database."""

    def __init__(self) -> None:
        self.audit_log: list[str] = []
        self.agenda: dict[str, Any] | None = None

    async def audit(self, session_id: str, action: str, actor: str, detail: str = "") -> None:
        self.audit_log.append(action)

    async def participant_decided(self, participant_id: int, admitted: bool) -> None:
        pass

    async def session_live(self, session_id: str) -> None:
        pass

    async def session_ended(self, session_id: str) -> None:
        pass

    async def load_agenda(self, session_id: str) -> dict[str, Any] | None:
        return self.agenda

    async def save_agenda(self, session_id: str, agenda: dict[str, Any]) -> None:
        self.agenda = agenda


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
typed_message = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    st.sampled_from(sorted(m.INBOUND_TYPES | {"teleport", "", "ADMIT"})),
    st.dictionaries(
        st.sampled_from(
            [
                "sdp",
                "participant_id",
                "text",
                "item_id",
                "item_ids",
                "audio",
                "video",
                "on",
                "t",
                "takeover",
                "rtt_ms",
                "done",
                "display_name",
                "extra",
            ]
        ),
        json_value,
        max_size=4,
    ),
)
raw_message = st.one_of(
    typed_message.map(json.dumps),
    json_value.map(json.dumps),
    st.text(max_size=200),
    st.just("x" * (64 * 1024 + 10)),
    st.just('{"type": "offer", "sdp": "v=0\\r\\nm=audio 9 RTP/AVP 0\\r\\n"}'),
)


async def _wait_for(channel: MemoryChannel, kind: str, **match: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for message in channel.outbox:
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message
        return None

    return await eventually(
        found,
        timeout=1.0,
        interval=0.002,
        message=lambda: f"no {kind} {match} in {channel.outbox[-5:]}",
    )


async def _started_room() -> tuple[Room, MemoryChannel, MemoryChannel, list[asyncio.Task[None]]]:
    room = Room(
        "s1",
        MemoryHooks(),
        MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",)),
    )
    t_chan, c_chan = MemoryChannel(), MemoryChannel()
    tasks = [
        asyncio.ensure_future(
            room.serve(Member(role=Role.THERAPIST, channel=t_chan, actor="user:1"))
        ),
        asyncio.ensure_future(
            room.serve(Member(role=Role.CLIENT, channel=c_chan, actor="client:7", participant_id=7))
        ),
    ]
    t_chan.inbox.put_nowait(json.dumps({"type": "join"}))
    await _wait_for(t_chan, "joined")
    c_chan.inbox.put_nowait(json.dumps({"type": "join"}))
    await eventually(lambda: 7 in room.waiting, timeout=1.0, interval=0.002)
    t_chan.inbox.put_nowait(json.dumps({"type": "admit", "participant_id": 7}))
    await _wait_for(c_chan, "admitted")
    return room, t_chan, c_chan, tasks


async def _finish(
    room: Room, channels: list[MemoryChannel], tasks: list[asyncio.Task[None]]
) -> None:
    for channel in channels:
        await channel.close()
    await asyncio.gather(*tasks)  # re-raises anything that escaped a serve loop
    await room.close()


def _check_errors(channel: MemoryChannel) -> None:
    for message in channel.outbox:
        if message["type"] == "error":
            assert message["code"] in ERROR_CODES, message
            assert message["message"]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(raw_message, min_size=1, max_size=8))
def test_client_fuzz_never_breaks_the_session(messages: list[str]) -> None:
    async def scenario() -> None:
        room, t_chan, c_chan, tasks = await _started_room()
        for raw in messages:
            c_chan.inbox.put_nowait(raw)
        c_chan.inbox.put_nowait(json.dumps({"type": "ping", "t": 424242}))
        t_chan.inbox.put_nowait(json.dumps({"type": "ping", "t": 1}))
        await _wait_for(t_chan, "pong", t=1)
        if not c_chan.closed:
            await _wait_for(c_chan, "pong", t=424242)
        # The therapist is untouched whatever the client sent.
        assert room.therapist is not None and room.status != "ended"
        assert {msg["type"] for msg in c_chan.outbox} <= CLIENT_MAY_SEE
        _check_errors(c_chan)
        await _finish(room, [t_chan, c_chan], tasks)

    asyncio.run(scenario())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(raw_message.filter(lambda raw: '"end"' not in raw), min_size=1, max_size=8))
def test_therapist_fuzz_keeps_room_serving(messages: list[str]) -> None:
    async def scenario() -> None:
        room, t_chan, c_chan, tasks = await _started_room()
        for raw in messages:
            t_chan.inbox.put_nowait(raw)
        t_chan.inbox.put_nowait(json.dumps({"type": "ping", "t": 99}))
        await _wait_for(t_chan, "pong", t=99)
        _check_errors(t_chan)
        await _finish(room, [t_chan, c_chan], tasks)

    asyncio.run(scenario())

"""Protocol fuzzing: whatever a participant sends, the room answers precisely and survives."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
from aiortc.sdp import SessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media import Role
from media.relay.call import Call
from media.relay.ice import MediaConfig
from media.relay.sdp import LINE_BREAKS, MAX_MEDIA_SECTIONS, SdpError
from signaling import messages as m
from signaling.room import Member, Room
from tests.media_helpers import FakeBrowser
from tests.signaling_helpers import MemoryChannel
from tests.support import eventually

LONG = os.environ.get("RAPPORT_LONG_TESTS") == "1"
EXAMPLES = 400 if LONG else 40
ERROR_CODES = {v for k, v in vars(m.ErrorCode).items() if k.isupper()} | {"internal"}
CLIENT_MAY_SEE = {
    "welcome",
    "ice_servers",  # an admitted client's ice_refresh
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
    # chat (issue 13): the client's own thread only (tests/test_chat.py)
    "chat_history",
    "chat_message",
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


def test_hostile_json_is_bad_json_and_the_call_goes_on() -> None:
    """Nesting deeper than the parser's stack and an integer past Python's digit limit are
    malformed JSON to the sender, not a traceback that drops the socket."""
    hostile = [
        "[" * 60_000,
        '{"type": "ping", "t": ' + "9" * 5000 + "}",
        "[" * 30_000 + "]" * 30_000,
        '{"type": "ping", "t": ' + '{"a":' * 9_000 + "1" + "}" * 9_000 + "}",
        "-" + "1" * 4301,
    ]

    async def scenario() -> None:
        room, t_chan, c_chan, tasks = await _started_room()
        for channel, t in ((c_chan, 424242), (t_chan, 1)):
            for raw in hostile:
                channel.inbox.put_nowait(raw)
            channel.inbox.put_nowait(json.dumps({"type": "ping", "t": t}))
            await _wait_for(channel, "pong", t=t)
            codes = [msg["code"] for msg in channel.outbox if msg["type"] == "error"]
            assert codes == ["bad_json"] * len(hostile)
            assert not channel.closed
        assert room.therapist is not None and room.status != "ended"
        assert room.client is not None and room.client.participant_id == 7
        await _finish(room, [t_chan, c_chan], tasks)

    asyncio.run(scenario())


# --- SDP: mutated offers through a real aiortc peer -------------------------------------------

OFFERS = 10_000 if LONG else 1_000
# Loopback-only media that refuses loopback candidates: every candidate an offer carries is
# filtered, so however an offer is mutated the server contacts nothing (a candidate that got
# through would show up at the listener below).
STRICT = MediaConfig(media_addresses=("127.0.0.1",))
SEPARATORS = sorted(LINE_BREAKS | {"\n"})
ADDRESSES = [
    "127.0.0.1",
    "169.254.169.254",
    "fd00:ec2::254",
    "0.0.0.0",
    "0.1.2.3",
    "::1",
    "::ffff:127.0.0.1",
    "10.0.0.1",
    "192.0.2.1",
    "localhost",
    "x.local",
    "999.1.1.1",
    "",
]
GARBAGE = ["\x00", "\t", " ", ":", "=", "\u2028", "\x85", "\r", "\x7f", "é", "9" * 30, "-1", "/"]


def _mutate(offer: str, rng: random.Random, listener_port: int) -> str:
    lines = offer.split("\r\n")

    def candidate() -> str:
        address = rng.choice([*ADDRESSES, "127.0.0.1"])
        port = rng.choice([listener_port, listener_port, 0, 70000, -1])
        proto = rng.choice(["udp", "UDP", "tcp", "sctp"])
        return f"a=candidate:1 {rng.choice([1, 2, 0, 256])} {proto} 1 {address} {port} typ host"

    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        choice = rng.randrange(11)
        if choice == 0:  # a separator and a candidate or section glued to a line
            extra = candidate() if rng.random() < 0.6 else "m=audio 9 UDP/TLS/RTP/SAVPF 0"
            lines[i] += rng.choice(SEPARATORS) + extra
        elif choice == 1:
            del lines[i]
        elif choice == 2:
            lines.insert(i, lines[i])
        elif choice == 3:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif choice == 4 and lines[i]:
            k = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:k] + rng.choice(GARBAGE) + lines[i][k + 1 :]
        elif choice == 5:
            lines.insert(i, candidate())
        elif choice == 6:  # more media sections than allowed
            start = next(n for n, line in enumerate(lines) if line.startswith("m="))
            lines += lines[start:] * rng.randint(1, 3)
        elif choice == 7 and lines[i].startswith("m="):
            fields = lines[i].split(" ")
            fields[rng.randrange(len(fields))] = rng.choice(["x", "application", "", "99999999"])
            lines[i] = " ".join(fields)
        elif choice == 8:
            lines = [line for line in lines if not line.startswith(rng.choice(["a=ice", "a=fin"]))]
        elif choice == 9:
            return "\r\n".join(lines)[: rng.randrange(len(offer))]
        else:
            lines[i] = lines[i].replace(" ", rng.choice(GARBAGE))
    return rng.choice(["\r\n", "\n", "\r\n"]).join(lines)


def _separator_offers(offer: str, listener_port: int) -> list[str]:
    """Every separator before a candidate and between sections, with a candidate aimed at the
    listener, once each: the systematic part, before the random one."""
    target = f"a=candidate:1 1 udp 2122252543 127.0.0.1 {listener_port} typ host"
    found = []
    for sep in SEPARATORS:
        for anchor, extra in (
            ("a=candidate:", target + sep),
            ("m=video", target + sep),
            ("m=video", "m=audio 9 UDP/TLS/RTP/SAVPF 0" + sep + "a=mid:7" + sep),
        ):
            found.append(offer.replace(anchor, extra + anchor, 1))
    return found


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
async def test_mutated_offers_never_cause_internal_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Thousands of mutated offers into one real call: each is answered or refused with
    ``SdpError``; none raises anything else; an answered one left aiortc holding no candidate
    (all are refused here) and at most four sections; none made the server send a STUN packet
    to the listener its candidates point at; and file descriptors, threads and tasks return to their
    baseline once the call closes."""
    caplog.set_level(logging.INFO, logger="rapport.media")
    received: list[bytes] = []

    class Listener(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.append(data)

    browser = FakeBrowser()
    base = await browser.offer()
    await browser.close()
    await asyncio.sleep(0)
    fds, threads = _open_fds(), threading.active_count()
    tasks = len(asyncio.all_tasks())
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Listener, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    rng = random.Random(12)
    offers = _separator_offers(base, port)
    offers += [_mutate(base, rng, port) for _ in range(OFFERS - len(offers))]
    outcomes: Counter[str] = Counter()
    internal: list[tuple[int, str]] = []
    slipped: list[tuple[int, str]] = []
    call = Call(STRICT)
    started = time.monotonic()
    try:
        for n, offer in enumerate(offers):
            try:
                await call.connect("client", offer)
                outcomes["answered"] += 1
                # What aiortc holds is what the filter passed: no candidate, few sections.
                held = call.peers["client"].pc.remoteDescription
                assert held is not None
                parsed = SessionDescription.parse(held.sdp)
                candidates = [c.ip for media in parsed.media for c in media.ice_candidates]
                if candidates or len(parsed.media) > MAX_MEDIA_SECTIONS:
                    slipped.append((n, f"{len(parsed.media)} sections, candidates {candidates}"))
            except SdpError as exc:
                outcomes["refused" if exc.__cause__ is None else "refused by aiortc"] += 1
            except Exception as exc:
                internal.append((n, repr(exc)))
        assert outcomes["answered"] > 0 and outcomes["refused"] > 0
        assert internal == []
        assert slipped == []
        assert received == []
        separated = outcomes.copy()
    finally:
        await call.close()
        transport.close()
    elapsed = time.monotonic() - started
    aiortc_reasons = Counter(
        r.getMessage() for r in caplog.records if "offer rejected by aiortc" in r.getMessage()
    )
    print(f"{len(offers)} offers in {elapsed:.1f} s: {dict(separated)}; {dict(aiortc_reasons)}")

    def at_baseline() -> bool:
        return (
            _open_fds() <= fds
            and threading.active_count() <= threads
            and len(asyncio.all_tasks()) <= tasks
        )

    await eventually(
        at_baseline,
        timeout=20.0,
        message=lambda: (
            f"fds {_open_fds()}/{fds}, threads {threading.active_count()}/{threads}, "
            f"tasks {len(asyncio.all_tasks())}/{tasks}"
        ),
    )

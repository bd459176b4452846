"""Cluster membership and room placement through a real (throwaway) Redis."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from media import MediaConfig, Role
from server.cluster import Cluster, NodeInfo, least_loaded
from server.cluster.wire import (
    HOST_STATE,
    Answer,
    Ask,
    CallQualityRead,
    MemberSpec,
    Open,
    QualityAnswer,
    envelope_adapter,
    member_from,
    member_spec,
    spec_fields,
)
from server.routes.admin import CallDetail, ParticipantQualityOut
from server.settings import Settings
from signaling.limits import Limits
from signaling.room import Member, RoomHooks
from signaling.rooms import RoomRegistry
from tests.support import eventually


class _StandInRoom:
    """What a node reports of a room it hosts (someone connected); no media needed here."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.members = {object()}
        self.created_at = 0.0


def _host_room(node: Cluster, session_id: str) -> None:
    node.rooms.rooms[session_id] = cast(Any, _StandInRoom(session_id))


def _registry() -> RoomRegistry:
    # No room is ever created on these nodes: placement needs only the registry's room list.
    return RoomRegistry(cast(RoomHooks, None), MediaConfig(), Limits())


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[Cluster] = []

    async def start(node_id: str, **options: Any) -> Cluster:
        options.setdefault("heartbeat_s", 0.5)
        options.setdefault("node_ttl_s", 3.0)
        options.setdefault("lease_s", 3.0)
        # These nodes share one process, whose CPU use is no one node's: left to the meter, a
        # busy moment at one node's heartbeat ranked it behind the other for every placement
        # (175 of 200 on one node, in a fresh-install run). Placement by CPU has its own test.
        options.setdefault("cpu", lambda: 0.0)
        cluster = Cluster(redis_url, node_id, _registry(), **options)
        await cluster.start()
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        await cluster.stop()


async def test_nodes_register_with_their_load_and_leave_on_stop(nodes: Any) -> None:
    a: Cluster = await nodes("node-a")
    b: Cluster = await nodes("node-b")
    listed = await a.directory.nodes()
    assert [n.node_id for n in listed] == ["node-a", "node-b"]
    assert all(n.calls == 0 and n.cores >= 1 and not n.draining for n in listed)
    await b.stop()
    assert [n.node_id for n in await a.directory.nodes()] == ["node-a"]


async def test_two_nodes_asked_at_the_same_moment_agree_on_one_host(nodes: Any) -> None:
    # Leases long enough for the whole burst: a lease whose room never opens is given back.
    a: Cluster = await nodes("node-a", lease_s=30.0)
    b: Cluster = await nodes("node-b", lease_s=30.0)
    sessions = [f"session-{i}" for i in range(200)]
    results = await asyncio.gather(*(node.place(s) for s in sessions for node in (a, b)))
    for i, session in enumerate(sessions):
        from_a, from_b = results[2 * i], results[2 * i + 1]
        assert from_a == from_b, session
        # Exactly one node holds the lease, and it is the one both were told.
        hosts = [n.node_id for n in (a, b) if session in n.hosted]
        assert hosts == [from_a], (session, hosts)
        assert await a.directory.host_of(session) == from_a
    # Equally loaded nodes share new sessions (rendezvous hashing), not all on one node.
    on_a = sum(1 for r in results[::2] if r == "node-a")
    assert 40 < on_a < 160, on_a


async def test_a_live_host_keeps_its_rooms_and_a_dead_one_loses_them(nodes: Any) -> None:
    a: Cluster = await nodes("node-a")
    b: Cluster = await nodes("node-b")
    host = await a.place("s1")
    assert host is not None
    assert (await a.directory.nodes())[0].calls == 0
    survivor, victim = (a, b) if host == "node-b" else (b, a)
    _host_room(victim, "s1")
    # The host renews its lease: well past the lease time, the room has not moved.
    await asyncio.sleep(3 * survivor.directory.lease_ms / 1000)
    assert await survivor.place("s1") == victim.node_id
    # A crash: the victim stops heartbeating without leaving.
    victim._stopped = True

    async def moved() -> bool:
        return await survivor.place("s1") == survivor.node_id

    await eventually(moved, timeout=10, interval=0.1, message="room re-placed on the survivor")


async def test_a_draining_node_takes_no_new_rooms_but_keeps_its_own(nodes: Any) -> None:
    draining = {"on": False}
    a: Cluster = await nodes("node-a", draining=lambda: draining["on"])
    b: Cluster = await nodes("node-b")
    kept = ""
    for i in range(100):
        if await a.place(f"k{i}") == "node-a":
            kept = f"k{i}"
            break
    assert kept
    _host_room(a, kept)
    draining["on"] = True

    async def seen_draining() -> bool:
        return any(n.draining for n in await b.directory.nodes() if n.node_id == "node-a")

    await eventually(seen_draining, timeout=5, interval=0.05, message="node-a draining")
    assert {await b.place(f"new-{i}") for i in range(30)} == {"node-b"}
    await asyncio.sleep(3 * a.directory.lease_ms / 1000)
    assert await b.place(kept) == "node-a"


async def test_a_signalling_only_node_relays_but_hosts_nothing(nodes: Any) -> None:
    await nodes("edge", hosts_rooms=False)
    b: Cluster = await nodes("media-b")
    assert {await b.place(f"s{i}") for i in range(20)} == {"media-b"}


def test_least_loaded_prefers_fewer_calls_per_core() -> None:
    busy = NodeInfo(node_id="a", calls=8, cores=2)
    idle = NodeInfo(node_id="b", calls=5, cores=4)
    drained = NodeInfo(node_id="c", calls=0, cores=4, draining=True)
    chosen = least_loaded([busy, idle, drained], "s")
    assert chosen is not None and chosen.node_id == "b"
    assert least_loaded([drained], "s") is None


def test_least_loaded_breaks_a_tie_in_calls_by_cpu_then_spreads_by_hash() -> None:
    hot = NodeInfo(node_id="a", calls=2, cores=2, cpu=1.2)
    cool = NodeInfo(node_id="b", calls=2, cores=2, cpu=0.1)
    assert all(least_loaded([hot, cool], f"s{i}").node_id == "b" for i in range(50))  # type: ignore[union-attr]
    # CPU noise within a quarter of the cores does not outrank the hash: both get rooms.
    near = NodeInfo(node_id="a", calls=2, cores=2, cpu=0.15)
    chosen = {least_loaded([near, cool], f"s{i}").node_id for i in range(50)}  # type: ignore[union-attr]
    assert chosen == {"a", "b"}


def test_single_node_mode_is_the_default() -> None:
    from server.app import create_app

    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    assert app.state.cluster is None


def test_a_heartbeat_slower_than_the_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="HEARTBEAT"):
        Settings(redis_url="redis://127.0.0.1:1/0", cluster_heartbeat_s=4, cluster_node_ttl_s=5)


async def test_an_unreachable_redis_is_named_at_start() -> None:
    from tests.conftest import free_port

    node = Cluster(f"redis://127.0.0.1:{free_port()}/0", "lonely", _registry())
    with pytest.raises(RuntimeError, match="RAPPORT_REDIS_URL"):
        await node.start()
    await node.stop()  # leaving an unreachable cluster must not raise either


async def test_a_node_asks_the_rooms_host_and_gives_up_after_its_timeout(nodes: Any) -> None:
    a: Cluster = await nodes("node-a", ask_timeout_s=0.5)
    b: Cluster = await nodes("node-b")
    assert await b.directory.place("s1", "node-b") == "node-b"
    await a.beat()  # a knows b is alive
    detail = CallDetail(
        session_id="s1",
        participants={"client": ParticipantQualityOut(score=87.0, label="good", history=[])},
    )
    asked: list[Ask] = []

    async def answer(ask: Ask) -> Answer:
        asked.append(ask)
        assert isinstance(ask.question, CallQualityRead)
        return QualityAnswer(detail=detail if ask.question.session_id == "s1" else None)

    b.answer_here = answer
    assert await a.remote_call_quality("s1") == detail
    assert [(x.question, x.origin) for x in asked] == [(CallQualityRead(session_id="s1"), "node-a")]
    # No node hosts "s2": nothing is asked. A room hosted by the asking node: nothing either.
    assert await a.remote_call_quality("s2") is None
    assert await a.directory.place("s3", "node-a") == "node-a"
    assert await a.remote_signals("s3") is None
    assert len(asked) == 1

    async def silent(ask: Ask) -> Answer:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    b.answer_here = silent
    started = asyncio.get_running_loop().time()
    assert await a.remote_call_quality("s1") is None
    assert asyncio.get_running_loop().time() - started < 5.0  # the 0.5 s timeout, not a hang
    assert a._asks == {}  # the unanswered ask is forgotten


async def test_a_node_that_hands_over_gives_its_leases_up_at_once(nodes: Any) -> None:
    a: Cluster = await nodes("node-a", lease_s=30.0)
    b: Cluster = await nodes("node-b", lease_s=30.0)
    assert await a.directory.place("kept", "node-a") == "node-a"
    assert await a.place("kept") == "node-a"
    _host_room(a, "kept")
    await a.hand_over()
    # Without waiting out the 30 s lease, the room goes to the node still taking rooms...
    assert await a.directory.host_of("kept") is None
    assert await b.place("kept") == "node-b"
    assert {await b.place(f"new-{i}") for i in range(20)} == {"node-b"}
    # ...and the handed-over node neither renews nor takes it back.
    await a.beat()
    assert await a.directory.host_of("kept") == "node-b"
    assert await a.place("kept") == "node-b" and "kept" not in a.hosted


def test_member_spec_carries_every_member_field_but_the_hosts_socket_state() -> None:
    names = {f.name for f in dataclasses.fields(Member)}
    assert HOST_STATE <= names, HOST_STATE - names  # no stale exclusion
    assert set(MemberSpec.model_fields) == names - HOST_STATE


def test_a_field_added_to_member_travels_to_the_host_with_no_change() -> None:
    @dataclasses.dataclass(eq=False)
    class Grown(Member):
        locale: str = "en"

    assert spec_fields(Grown).keys() == {*MemberSpec.model_fields, "locale"}


def test_a_relayed_member_arrives_as_it_left() -> None:
    sent = Member(
        role=Role.CLIENT,
        channel=cast(Any, None),
        actor="client:7",
        participant_id=7,
        previously_admitted=True,
        invite_hash="ih",
        invite_expires_at=1234.5,
        identity_hash="idh",
        address="10.0.0.9",
        login_hash="lh",
        user_id=3,
        display_name="Dr. Rey",
        state="in_call",
        audio_muted=True,
    )
    opened = Open(conn="c", origin="edge", session_id="s", status="live", member=member_spec(sent))
    envelope = envelope_adapter.validate_json(opened.model_dump_json())
    assert isinstance(envelope, Open)
    channel = cast(Any, object())
    got = member_from(envelope.member, channel)
    carried = [name for name in MemberSpec.model_fields]
    assert all(getattr(got, name) == getattr(sent, name) for name in carried)
    # Every carried field was set to something other than its default above.
    defaults = Member(role=Role.THERAPIST, channel=cast(Any, None), actor="")
    assert all(getattr(sent, name) != getattr(defaults, name) for name in carried)
    # The socket's state starts afresh on the host.
    assert got.channel is channel and got.state == "connected" and not got.audio_muted

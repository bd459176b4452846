"""Calls whose browser offers no usable candidate: the server learns its address from its checks.

Firefox with default preferences offers only mDNS host candidates (``<uuid>.local``); a browser
behind a NAT without STUN offers only addresses the server cannot reach; both are dropped by
the candidate filter (media/relay/ice.py), which stays exactly as strict. The call must still
connect, because the browser's connectivity checks reveal where it is (a peer-reflexive
candidate, RFC 8445 7.3.1.3), as SFUs do. Real aiortc peers on 127.0.0.1.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest

from media.relay.call import Call
from media.relay.ice import MediaConfig, address_allowed, candidate_allowed
from media.relay.peer import ParticipantPeer
from media.workers.pool import MediaWorkerPool
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack, mean_rgb, rms
from tests.support import eventually

CONFIG = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))
TRANSCODE = MediaConfig(
    allow_loopback_candidates=True, media_addresses=("127.0.0.1",), relay_mode="transcode"
)
WAIT_S = 20.0
_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d) (\S+) (\d+) (\S+) (\d+) typ (\S+)(.*)$")


def _rewrite(sdp: str, address: Callable[[int], str | None]) -> str:
    """Replace each candidate's address with ``address(n)``, or drop it when that is None."""
    out: list[str] = []
    n = 0
    for line in sdp.splitlines():
        match = _CANDIDATE.match(line)
        if match is None:
            out.append(line)
            continue
        new = address(n)
        n += 1
        if new is None:
            continue
        foundation, component, transport, priority, _, port, typ, rest = match.groups()
        out.append(
            f"a=candidate:{foundation} {component} {transport} {priority} {new} {port} typ {typ}"
            f"{rest}"
        )
    assert n > 0, "the offer had no candidates to rewrite"
    return "\r\n".join(out) + "\r\n"


def _mdns(_: int) -> str:
    return f"{uuid.uuid4()}.local"


def _filtered(n: int) -> str:
    # Link-local (never allowed) and, with loopback-only media addresses, a documentation
    # address the server may not aim checks at: both dropped by the unchanged filter.
    return "169.254.10.20" if n % 2 == 0 else "203.0.113.44"


def _none(_: int) -> None:
    return None


def _remote_candidates(peer: ParticipantPeer) -> list[tuple[str, str]]:
    """(type, address) of every remote candidate the server peer's ICE agent holds."""
    found: list[tuple[str, str]] = []
    for transceiver in peer.pc.getTransceivers():
        transport = transceiver.receiver.transport
        for candidate in transport.transport.getRemoteCandidates():
            found.append((candidate.type, candidate.ip))
    return found


async def _two_way_call(config: MediaConfig, rewrite: Callable[[int], str | None]) -> None:
    """Therapist offers normally; the client's offer has its candidates rewritten."""
    call = Call(config)
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((220, 30, 30)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((30, 30, 220)))
    try:
        await therapist.accept(await call.connect("therapist", await therapist.offer()))
        offer = _rewrite(await client.offer(), rewrite)
        answer = await call.connect("client", offer)
        # The answer carries the server's own candidates, so the browser has somewhere to
        # send its checks.
        assert re.search(r"^a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 ", answer, re.M), answer
        await client.accept(answer)
        await client.wait_for("video", 10, timeout=WAIT_S)
        await therapist.wait_for("video", 10, timeout=WAIT_S)
        await client.wait_for("audio", 50, timeout=WAIT_S)
        await therapist.wait_for("audio", 50, timeout=WAIT_S)
        assert mean_rgb(client.received["video"][-1])[0] > 150  # therapist's red
        assert mean_rgb(therapist.received["video"][-1])[2] > 150  # client's blue
        assert max(rms(f) for f in therapist.received["audio"][-20:]) > 1000
        assert max(rms(f) for f in client.received["audio"][-20:]) > 1000
        await eventually(
            lambda: call.media_state("client") == "connected", timeout=WAIT_S, message="client"
        )
        # Learned from the checks, never from the offer: no mDNS name was resolved and no
        # filtered address was taken up.
        peer = call.peers["client"]
        remote = _remote_candidates(peer)
        assert remote, "the server peer has no remote candidate"
        assert all(kind == "prflx" and ip == "127.0.0.1" for kind, ip in remote), remote
        # The address guard sat on the path and let the allowed source through.
        assert peer.prflx is not None and peer.prflx.installed == 1
        assert peer.prflx.dropped == 0
    finally:
        await therapist.close()
        await client.close()
        await call.close()


@pytest.mark.parametrize("config", [CONFIG, TRANSCODE], ids=["forward", "transcode"])
async def test_mdns_only_client_connects_through_its_checks(config: MediaConfig) -> None:
    await _two_way_call(config, _mdns)


async def test_client_with_only_filtered_addresses_connects_through_its_checks() -> None:
    await _two_way_call(CONFIG, _filtered)


async def test_client_offering_no_candidates_connects_through_its_checks() -> None:
    await _two_way_call(CONFIG, _none)


async def test_mdns_only_client_connects_through_a_media_worker() -> None:
    """The peer lives in a worker process in production; the same call through one."""
    pool = MediaWorkerPool(CONFIG, 1)
    await pool.start()
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((220, 30, 30)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((30, 30, 220)))
    call = pool.call("prflx-session")
    try:
        await therapist.accept(await call.connect("therapist", await therapist.offer()))
        offer = _rewrite(await client.offer(), _mdns)
        await client.accept(await call.connect("client", offer))
        await client.wait_for("video", 10, timeout=WAIT_S)
        await therapist.wait_for("video", 10, timeout=WAIT_S)
        await therapist.wait_for("audio", 50, timeout=WAIT_S)
        assert mean_rgb(therapist.received["video"][-1])[2] > 150
    finally:
        await therapist.close()
        await client.close()
        await call.close()
        await pool.close()


async def test_checks_from_a_forbidden_source_are_dropped_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check's source is held to the candidate filter's rule: here loopback is not allowed,
    so the client's checks from 127.0.0.1 get no answer and teach the server nothing; once the
    wait for checks is over the server passes the browser's end-of-candidates on and the
    peer fails instead of staying "connecting"."""
    monkeypatch.setattr("media.relay.ice.PRFLX_WAIT_S", 2.0)
    strict = MediaConfig(allow_loopback_candidates=False, media_addresses=("127.0.0.1",))
    call = Call(strict)
    client = FakeBrowser()
    try:
        answer = await call.connect("client", _rewrite(await client.offer(), _mdns))
        await client.accept(answer)
        peer = call.peers["client"]
        assert peer.prflx is not None and peer.prflx.installed == 1
        await eventually(
            lambda: peer.prflx is not None and peer.prflx.dropped >= 3,
            timeout=WAIT_S,
            message="the client's checks reaching the guard",
        )
        assert _remote_candidates(peer) == []
        assert peer.stats()["prflx_checks_dropped"] >= 3
        # No response ever reached the client: none of its candidate pairs succeeded.
        client_ice = client.pc.getTransceivers()[0].receiver.transport.transport
        assert client_ice.state in ("checking", "failed"), client_ice.state
        await eventually(
            lambda: peer.pc.iceConnectionState == "failed" and peer.media_state == "none",
            timeout=WAIT_S,
            message=lambda: f"ICE {peer.pc.iceConnectionState}, media {peer.media_state}",
        )
        assert _remote_candidates(peer) == []
    finally:
        await client.close()
        await call.close()


def test_peer_reflexive_sources_follow_the_candidate_filter_which_is_unchanged() -> None:
    """The filter keeps its strictness; a check's source address is judged by the same rule."""
    local = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))
    public = MediaConfig(media_addresses=("192.0.2.2",))

    def line(address: str, transport: str = "udp") -> str:
        return f"candidate:1 1 {transport} 2122252543 {address} 50000 typ host"

    # Never resolved, never contacted, whatever the configuration.
    for config in (local, public):
        assert not candidate_allowed(line(f"{uuid.uuid4()}.local"), config)
        assert not candidate_allowed(line("10.1.2.3", "tcp"), config)
        for address in ("169.254.169.254", "fe80::1", "224.0.0.251", "0.0.0.0", "240.0.0.1"):
            assert not candidate_allowed(line(address), config), address
            assert not address_allowed(address, config), address
    # Loopback only when allowed; with loopback-only media, nothing else.
    assert candidate_allowed(line("127.0.0.1"), local) and address_allowed("127.0.0.1", local)
    assert not candidate_allowed(line("127.0.0.1"), public)
    assert not address_allowed("127.0.0.1", public)
    assert not candidate_allowed(line("10.1.2.3"), local)
    assert not address_allowed("10.1.2.3", local)
    for address in ("10.1.2.3", "203.0.113.7", "2001:db8::7"):
        assert candidate_allowed(line(address), public) == address_allowed(address, public)
    assert address_allowed("203.0.113.7", public)

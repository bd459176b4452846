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

import numpy as np
import pytest
from av import AudioFrame, VideoFrame

from media.relay.call import Call
from media.relay.ice import MediaConfig
from media.relay.peer import ParticipantPeer
from media.workers.pool import MediaWorkerPool
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack
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


def _mean_rgb(frame: object) -> np.ndarray:
    assert isinstance(frame, VideoFrame)
    pixels: np.ndarray = frame.to_ndarray(format="rgb24").reshape(-1, 3)
    mean: np.ndarray = pixels.mean(axis=0)
    return mean


def _rms(frame: object) -> float:
    assert isinstance(frame, AudioFrame)
    return float(np.sqrt(np.mean(frame.to_ndarray().astype(np.float64) ** 2)))


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
        assert _mean_rgb(client.received["video"][-1])[0] > 150  # therapist's red
        assert _mean_rgb(therapist.received["video"][-1])[2] > 150  # client's blue
        assert max(_rms(f) for f in therapist.received["audio"][-20:]) > 1000
        assert max(_rms(f) for f in client.received["audio"][-20:]) > 1000
        await eventually(
            lambda: call.media_state("client") == "connected", timeout=WAIT_S, message="client"
        )
        # Learned from the checks, never from the offer: no mDNS name was resolved and no
        # filtered address was taken up.
        remote = _remote_candidates(call.peers["client"])
        assert remote, "the server peer has no remote candidate"
        assert all(kind == "prflx" and ip == "127.0.0.1" for kind, ip in remote), remote
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
        assert _mean_rgb(therapist.received["video"][-1])[2] > 150
    finally:
        await therapist.close()
        await client.close()
        await call.close()
        await pool.close()

"""The offer aiortc parses is the offer that was checked (issue 12, item 3).

aiortc splits SDP with ``str.splitlines()``; a checker that split on ``\\n`` let a candidate or
a media section ride inside one "line" behind ``\\r``, ``\\x1c`` or U+2028, and the server sent
STUN to wherever it pointed. These tests smuggle candidates behind every such separator into a
real aiortc offer, through a real ``Call``, towards a real UDP listener on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from media.relay.call import Call
from media.relay.ice import (
    PRIVATE_NETWORKS,
    MediaConfig,
    address_allowed,
    candidate_allowed,
)
from media.relay.sdp import LINE_BREAKS, MAX_MEDIA_SECTIONS, SdpError, sanitize_offer
from server.app import create_app
from server.settings import Settings
from tests.conftest import make_settings
from tests.media_helpers import FakeBrowser
from tests.support import eventually

# Loopback media, loopback candidates refused: how a production server treats 127.0.0.1.
STRICT = MediaConfig(media_addresses=("127.0.0.1",))
LOOPBACK_OK = MediaConfig(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))
PUBLIC = MediaConfig(media_addresses=("192.0.2.2",))
SEPARATORS = sorted(LINE_BREAKS)
STUN_MAGIC = b"\x21\x12\xa4\x42"


def _candidate(address: str, port: int = 9, transport: str = "udp") -> str:
    return f"candidate:1 1 {transport} 2122252543 {address} {port} typ host"


def _smuggle(offer: str, extra: str, sep: str) -> str:
    """``extra`` hidden behind ``sep`` at the end of every media section's mid line."""
    assert "a=mid:" in offer
    lines = offer.split("\r\n")
    return "\r\n".join(line + sep + extra if line.startswith("a=mid:") else line for line in lines)


@pytest.fixture
async def offer() -> AsyncIterator[str]:
    browser = FakeBrowser()
    try:
        yield await browser.offer()
    finally:
        await browser.close()


def test_the_separators_are_every_one_str_splitlines_knows() -> None:
    breaks = {chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) == 2}
    assert breaks == set(LINE_BREAKS) | {"\n"}


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "fd00:ec2::254"])
async def test_a_candidate_behind_any_line_break_is_refused(
    offer: str, sep: str, address: str
) -> None:
    smuggled = _smuggle(offer, "a=" + _candidate(address), sep)
    with pytest.raises(SdpError, match=f"U\\+{ord(sep):04X}"):
        sanitize_offer(smuggled, STRICT)


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
async def test_sections_behind_a_line_break_do_not_get_past_the_cap(offer: str, sep: str) -> None:
    extra = sep.join(["m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:9"] * MAX_MEDIA_SECTIONS)
    with pytest.raises(SdpError, match=f"U\\+{ord(sep):04X}"):
        sanitize_offer(_smuggle(offer, extra, sep), STRICT)


async def test_what_aiortc_gets_splits_into_exactly_the_checked_lines(offer: str) -> None:
    for text in (offer, offer.replace("\r\n", "\n")):
        cleaned = sanitize_offer(text, LOOPBACK_OK)
        assert cleaned.endswith("\r\n") and "\n" not in cleaned.replace("\r\n", "")
        assert cleaned.splitlines() == [line for line in text.splitlines() if line]
    sections = offer.split("\r\nm=")
    too_many = "\r\nm=".join(sections + [sections[-1]] * (MAX_MEDIA_SECTIONS - 1))
    with pytest.raises(SdpError, match="too many media sections"):
        sanitize_offer(too_many, LOOPBACK_OK)
    with pytest.raises(SdpError, match="U\\+000D"):
        sanitize_offer(offer.replace("\r\n", "\r"), LOOPBACK_OK)  # old Mac line ends


async def test_a_bare_candidate_attribute_is_dropped_not_handed_to_aiortc(offer: str) -> None:
    cleaned = sanitize_offer(offer.replace("a=mid:0\r\n", "a=mid:0\r\na=candidate\r\n"), STRICT)
    assert "a=candidate" not in cleaned


async def _stun_listener() -> tuple[asyncio.DatagramTransport, int, list[bytes]]:
    received: list[bytes] = []

    class Listener(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if data[4:8] == STUN_MAGIC:
                received.append(data)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Listener, local_addr=("127.0.0.1", 0)
    )
    return transport, transport.get_extra_info("sockname")[1], received


async def test_smuggled_loopback_candidates_get_no_stun_from_a_real_peer() -> None:
    """Control first: the same candidate on a line of its own, with loopback allowed, draws
    STUN checks, which proves the listener would see them. Then every separator: the offer is
    refused and the listener, watched three times as long as the control took (2 s at least),
    receives nothing."""
    control_transport, control_port, control_packets = await _stun_listener()
    transport, port, packets = await _stun_listener()
    browser = FakeBrowser()
    try:
        offer = await browser.offer()
        control = Call(LOOPBACK_OK)
        started = time.monotonic()
        try:
            plain = offer.replace(
                "a=mid:0\r\n", f"a=mid:0\r\na={_candidate('127.0.0.1', control_port)}\r\n", 1
            )
            await control.connect("client", plain)
            await eventually(lambda: control_packets, timeout=10.0, message="the control's STUN")
            first_stun_s = time.monotonic() - started
        finally:
            await control.close()

        call = Call(STRICT)
        try:
            refused = []
            for sep in SEPARATORS:
                try:
                    await call.connect(
                        "client", _smuggle(offer, "a=" + _candidate("127.0.0.1", port), sep)
                    )
                except SdpError:
                    refused.append(sep)
            await asyncio.sleep(max(2.0, 3 * first_stun_s))
            assert packets == [], f"{len(packets)} STUN packets reached 127.0.0.1:{port}"
            assert refused == SEPARATORS
            assert call.peers == {}
        finally:
            await call.close()
    finally:
        await browser.close()
        transport.close()
        control_transport.close()


def test_metadata_and_this_network_addresses_are_never_contacted() -> None:
    everything_private = MediaConfig(
        media_addresses=("192.0.2.2",), allowed_candidate_networks=("fd00::/8", "100.64.0.0/10")
    )
    for config in (PUBLIC, everything_private):
        for address in (
            "fd00:ec2::254",  # AWS IMDS over IPv6
            "100.100.100.200",  # Alibaba Cloud metadata
            "0.0.0.0",
            "0.1.2.3",
            "0.255.255.255",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fec0::1",
        ):
            assert not address_allowed(address, config), address
            assert not candidate_allowed(_candidate(address), config), address
    assert address_allowed("fd00:ec2::253", everything_private)
    assert address_allowed("100.100.100.201", everything_private)


def test_private_ranges_are_an_operators_allow_list() -> None:
    lan = MediaConfig(
        media_addresses=("192.0.2.2",), allowed_candidate_networks=("192.168.1.0/24",)
    )
    cloud = MediaConfig(media_addresses=("192.0.2.2",), allowed_candidate_networks=())
    assert PUBLIC.allowed_candidate_networks == PRIVATE_NETWORKS  # today's deployments unchanged
    cases = {
        "192.168.1.7": (True, True, False),
        "192.168.2.7": (True, False, False),
        "10.1.2.3": (True, False, False),
        "172.16.5.5": (True, False, False),
        "100.64.0.1": (True, False, False),
        "fd12:3456::1": (True, False, False),
        "8.8.8.8": (True, True, True),  # public addresses are what browsers are reached on
        "2606:4700::1111": (True, True, True),
        "203.0.113.7": (True, True, True),
    }
    for address, expected in cases.items():
        got = tuple(address_allowed(address, c) for c in (PUBLIC, lan, cloud))
        assert got == expected, address
        # Peer-reflexive sources (media.aiortc_compat.prflx) are judged by the same rule.
        for config in (PUBLIC, lan, cloud):
            assert candidate_allowed(_candidate(address), config) == address_allowed(
                address, config
            )
    assert not candidate_allowed(_candidate(f"{uuid.uuid4()}.local"), lan)
    for bad in (("8.8.8.0/24",), ("127.0.0.0/8",), ("169.254.0.0/16",), ("banana",)):
        with pytest.raises(ValueError, match=r"private range|not an IP network"):
            MediaConfig(allowed_candidate_networks=bad)


def test_the_allow_list_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert tuple(Settings().allowed_candidate_networks) == PRIVATE_NETWORKS
    monkeypatch.setenv("RAPPORT_ALLOWED_CANDIDATE_NETWORKS", "")
    assert Settings().allowed_candidate_networks == []
    monkeypatch.setenv("RAPPORT_ALLOWED_CANDIDATE_NETWORKS", "192.168.1.0/24, fd12::/16")
    assert Settings().allowed_candidate_networks == ["192.168.1.0/24", "fd12::/16"]
    monkeypatch.setenv("RAPPORT_ALLOWED_CANDIDATE_NETWORKS", '["10.0.0.0/8"]')
    assert Settings().allowed_candidate_networks == ["10.0.0.0/8"]
    monkeypatch.setenv("RAPPORT_ALLOWED_CANDIDATE_NETWORKS", "203.0.113.0/24")
    with pytest.raises(ValueError, match="not inside a private range"):
        Settings()
    # The server's media (in-process rooms and worker processes alike) gets the setting.
    settings = make_settings(
        tmp_path, 8000, media_workers=0, allowed_candidate_networks=["192.168.1.0/24"]
    )
    media_config = create_app(settings).state.rooms.media_config
    assert media_config.allowed_candidate_networks == ("192.168.1.0/24",)


async def test_a_connection_address_that_is_not_an_ip_is_refused(offer: str) -> None:
    """aiortc keeps c= and a=rtcp: addresses and raises ValueError on them each time the
    remote description is read (found by the 10,000-offer fuzz)."""
    for bad in (
        offer.replace("c=IN IP4 127.0.0.1", "c=IN IP4 127.0.0.é", 1),
        offer.replace("a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 example.org", 1),
    ):
        with pytest.raises(SdpError, match="connection address is not an IP address"):
            sanitize_offer(bad, STRICT)


async def test_an_mdns_rtcp_address_is_dropped_not_refused_or_resolved(offer: str) -> None:
    """Firefox names its RTCP address by its mDNS host name; refusing it cut every Firefox
    client off (found by tests/browser/test_firefox.py). The line is dropped (rtcp-mux), a
    ``.local`` c= address becomes 0.0.0.0, and neither name reaches aiortc."""
    name = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9.local"
    firefoxish = offer.replace("a=rtcp:9 IN IP4 0.0.0.0", f"a=rtcp:9 IN IP4 {name}", 1).replace(
        "c=IN IP4 127.0.0.1", f"c=IN IP4 {name}", 1
    )
    assert name in firefoxish
    cleaned = sanitize_offer(firefoxish, STRICT)
    assert name not in cleaned
    assert "c=IN IP4 0.0.0.0" in cleaned


def _drop_fingerprint(offer: str, section: int) -> str:
    """``offer`` without the fingerprint of media section ``section`` (1-based)."""
    parts = offer.split("\r\nm=")
    assert len(parts) > section and "a=fingerprint:" in parts[section]
    lines = parts[section].split("\r\n")
    parts[section] = "\r\n".join(x for x in lines if not x.startswith("a=fingerprint:"))
    return "\r\nm=".join(parts)


async def test_a_fingerprint_in_only_some_media_sections_is_refused(offer: str) -> None:
    """aiortc accepted such an offer and its background connect task then raised an
    AssertionError nobody collected: the call stayed without media and no error was sent."""
    sections = offer.split("\r\nm=")[1:]
    assert len(sections) == 2 and all("a=fingerprint:" in x for x in sections)
    for section in (1, 2):
        with pytest.raises(
            SdpError, match=f"Media section\\(s\\) {section} lack a DTLS fingerprint"
        ):
            sanitize_offer(_drop_fingerprint(offer, section), LOOPBACK_OK)
    with pytest.raises(SdpError, match="lacks a DTLS fingerprint"):
        sanitize_offer(_drop_fingerprint(_drop_fingerprint(offer, 1), 2), LOOPBACK_OK)
    # At session level it covers every section, as aiortc reads it.
    fingerprint = next(x for x in offer.split("\r\n") if x.startswith("a=fingerprint:"))
    moved = _drop_fingerprint(_drop_fingerprint(offer, 1), 2).replace(
        "\r\nm=", f"\r\n{fingerprint}\r\nm=", 1
    )
    assert fingerprint in sanitize_offer(moved, LOOPBACK_OK).split("\r\nm=")[0]

"""ICE configuration and hygiene.

aiortc accepts any remote candidate, including loopback, link-local and cloud-metadata
addresses, which lets a hostile browser aim the server's connectivity checks at internal
services. Candidates are filtered out of every offer before aiortc sees them.

Filtering can leave a browser with no candidate at all: Firefox offers only mDNS names
(``<uuid>.local``), a browser behind a NAT without STUN offers only addresses the server cannot
reach. Such a browser still reaches the server: it has the server's candidates from the answer
and sends connectivity checks, whose source address is a peer-reflexive candidate (RFC 8445
7.3.1.3), as SFUs learn it. aioice learns those, but only if it is not told too early that the
browser has no more candidates: end-of-candidates with none left makes it drop the ICE
component, gather nothing for the answer and fail at once. So the offer's end-of-candidates is
withheld from aiortc and given to it only after ``PRFLX_WAIT_S`` without a connection.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer


@dataclass(frozen=True)
class MediaConfig:
    """What the media layer needs to know about the deployment."""

    # The server's own peers only (RAPPORT_SERVER_ICE_SERVERS): the browsers' TURN credentials
    # are per participant and never reach the media layer.
    ice_servers: Sequence[dict[str, Any]] = ()
    allow_loopback_candidates: bool = False
    media_addresses: Sequence[str] = field(default_factory=tuple)
    # "forward": pass encoded VP8/Opus frames through (no video decode or encode);
    # "transcode": aiortc decodes and re-encodes everything (the original relay).
    relay_mode: str = "forward"

    def rtc_configuration(self) -> RTCConfiguration:
        # An explicit empty list matters: with None aiortc falls back to a public STUN server.
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    @property
    def loopback_only(self) -> bool:
        return bool(self.media_addresses) and all(
            ipaddress.ip_address(a).is_loopback for a in self.media_addresses
        )


# How long a peer waits for the browser's checks before accepting the browser's own word that
# it has no more candidates (ICE then fails if none arrived). Long enough for a browser that
# sends its first check a few seconds late on a loaded machine, short enough that a call that
# cannot connect says so within the time a person waits for video.
PRFLX_WAIT_S = 10.0
END_OF_CANDIDATES = "a=end-of-candidates"


def withhold_end_of_candidates(sdp: str) -> tuple[str, bool]:
    """Return ``sdp`` without its end-of-candidates lines, and whether it had any.

    Lets aiortc keep waiting for peer-reflexive candidates (see the module docstring); the
    caller signals the end itself later, through aiortc's public ``addIceCandidate(None)``.
    """
    lines = sdp.split("\r\n")
    kept = [line for line in lines if line.strip() != END_OF_CANDIDATES]
    return "\r\n".join(kept), len(kept) != len(lines)


_original_get_host_addresses = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: Iterable[str]) -> None:
    """Gather local candidates only on these addresses (all interfaces when empty).

    aioice exposes no option for this and skips loopback, so its module-level lookup is
    replaced; this is process-wide, like the network interfaces it describes.
    """
    chosen = list(addresses)
    if not chosen:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return

    def _chosen(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a
            for a in chosen
            if (use_ipv4 and ipaddress.ip_address(a).version == 4)
            or (use_ipv6 and ipaddress.ip_address(a).version == 6)
        ]

    aioice.ice.get_host_addresses = _chosen


def candidate_allowed(candidate_line: str, config: MediaConfig) -> bool:
    """Decide whether a remote ``candidate:`` attribute may reach aiortc."""
    parts = candidate_line.split()
    if len(parts) < 8 or parts[6] != "typ":
        return False
    transport, address = parts[2].lower(), parts[4]
    if transport != "udp":
        return False  # aioice speaks UDP only; TCP candidates would just fail later.
    if address.endswith(".local"):
        return False  # mDNS names need multicast resolution; the browser also offers srflx/relay.
    return address_allowed(address, config)


def address_allowed(address: str, config: MediaConfig) -> bool:
    """Whether the server may send to ``address``: an offered candidate's, or the source of a
    connectivity check it would learn as peer-reflexive (media.aiortc_compat.prflx)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback:
        return config.allow_loopback_candidates
    if config.loopback_only:
        return False
    return not (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved)

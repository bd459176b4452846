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

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Private address space (RFC 1918, carrier-grade NAT of RFC 6598, IPv6 unique local of
# RFC 4193): where a LAN deployment's browsers are, and where a cloud host's internal services
# are. Candidates there are allowed only inside MediaConfig.allowed_candidate_networks, which
# by default is all of it, as before the allow-list existed (a server on a practice's LAN
# keeps working); a server in a cloud narrows it, usually to nothing.
PRIVATE_NETWORKS: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)
# Never contacted, whatever the allow-list says: "this network" (RFC 1122: some stacks send
# 0.x.x.x to the local host) and cloud metadata services reachable at ordinary-looking
# addresses (AWS IMDS over IPv6 inside fc00::/7, Alibaba's inside 100.64.0.0/10, Azure's host
# endpoint). The IPv4 metadata address 169.254.169.254 is link-local, refused as such.
DENIED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
)


@functools.cache
def parse_networks(entries: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """``entries`` as networks; ``ValueError`` names the first one that is not a network."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP network (like 192.168.1.0/24)") from None
    return tuple(networks)


def check_allowed_networks(entries: Sequence[str]) -> tuple[str, ...]:
    """Refuse an allow-list entry outside private space: it would read as a grant and do nothing
    (public addresses are always allowed; loopback has its own setting; link-local, metadata
    and the like never are)."""
    private = parse_networks(PRIVATE_NETWORKS)
    for entry, network in zip(entries, parse_networks(tuple(entries)), strict=True):
        if not any(
            network.version == p.version and network.subnet_of(p)  # type: ignore[arg-type]
            for p in private
        ):
            raise ValueError(
                f"{entry!r} is not inside a private range ({', '.join(PRIVATE_NETWORKS)})"
            )
    return tuple(entries)


@dataclass(frozen=True)
class MediaConfig:
    """What the media layer needs to know about the deployment."""

    # The server's own peers only (RAPPORT_SERVER_ICE_SERVERS): the browsers' TURN credentials
    # are per participant and never reach the media layer.
    ice_servers: Sequence[dict[str, Any]] = ()
    allow_loopback_candidates: bool = False
    # Private networks remote candidates (and peer-reflexive sources) may be in; see
    # PRIVATE_NETWORKS. Validated on construction, so a worker never starts with a bad one.
    allowed_candidate_networks: tuple[str, ...] = PRIVATE_NETWORKS
    media_addresses: Sequence[str] = field(default_factory=tuple)
    # "forward": pass encoded VP8/Opus frames through (no video decode or encode);
    # "transcode": aiortc decodes and re-encodes everything (the original relay).
    relay_mode: str = "forward"

    def __post_init__(self) -> None:
        check_allowed_networks(self.allowed_candidate_networks)

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
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False  # reserved includes ::ffff:0:0/96, so a mapped IPv4 never slips through
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False  # fec0::/10, deprecated (RFC 3879) but still routed inside some sites
    if _within(ip, parse_networks(DENIED_NETWORKS)):
        return False
    if _within(ip, parse_networks(PRIVATE_NETWORKS)):
        return _within(ip, parse_networks(config.allowed_candidate_networks))
    return True


def _within(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Iterable[IpNetwork]
) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)

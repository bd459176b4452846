"""Peer-reflexive candidates under the same address rules as offered ones.

A browser whose offered candidates were all filtered (mDNS names, unreachable or forbidden
addresses) still connects, because aioice learns its address from its connectivity checks
(RFC 8445 7.3.1.3; media/relay/ice.py says why that needs end-of-candidates held back). aioice
answers any authenticated check and then sends its own triggered check to the source address,
whatever it is. The source of a check that reached us is not chosen by the browser the way
an offered candidate is, but a forged or odd source (loopback, link-local, metadata,
multicast) must not become a way around the candidate filter: so every incoming check is
first judged by the same rule as an offered candidate, and one from a forbidden address is
dropped unanswered; the server never sends to that address.

aioice has no hook for this. The check is a wrapper around ``Connection.request_received`` of
each ICE connection of one peer (an instance attribute, not a patch of the class), which
``StunProtocol.datagram_received`` calls for every STUN request. ``check_prflx()`` reads the
aioice and aiortc source lines this relies on; ``guard.check_internals()`` includes it. When
they no longer match, ``guard_peer_reflexive`` installs nothing and says so: a check's source
address is still the address the packet came from, so the call keeps working, with aioice's
own behaviour.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer

from .pin import missing, source, version_problems

log = logging.getLogger("rapport.media.aiortc_compat")


@dataclass
class PrflxGuard:
    """Counts what the guard did for one peer (kept small: no addresses, nothing to log)."""

    dropped: int = 0
    installed: int = 0


@functools.cache
def _install_problems() -> tuple[str, ...]:
    """Checked once per process: reading sources costs milliseconds, peers are many."""
    return tuple(version_problems() + check_prflx())


def check_prflx() -> list[str]:
    """What no longer matches the aioice/aiortc internals the guard wraps."""
    problems = missing(
        "aioice StunProtocol",
        (
            "self.receiver.request_received(message, addr, self)",
            source(aioice.ice.StunProtocol.datagram_received),
        ),
    )
    request_received = source(getattr(aioice.ice.Connection, "request_received", None))
    problems += missing(
        "aioice Connection.request_received",
        ("def request_received(", request_received),
        ("protocol.send_stun(response, addr)", request_received),
        ("self.check_incoming(message, addr, protocol)", request_received),
    )
    problems += missing(
        "aiortc RTCIceGatherer",
        ("self._connection = Connection(", source(RTCIceGatherer.__init__)),
    )
    return problems


def guard_peer_reflexive(pc: RTCPeerConnection, allowed: Callable[[str], bool]) -> PrflxGuard:
    """Drop incoming checks on ``pc``'s ICE connections whose source ``allowed`` rejects.

    Call after ``setRemoteDescription`` (the transports exist) and before the browser can send
    checks (before the answer leaves).
    """
    guard = PrflxGuard()
    problems = _install_problems()
    if problems:
        log.warning("peer-reflexive address guard not installed: %s", "; ".join(problems))
        return guard
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        connection = getattr(dtls.transport.iceGatherer, "_connection", None)
        if not isinstance(connection, aioice.ice.Connection) or id(connection) in seen:
            continue  # bundled transceivers share one ICE connection
        seen.add(id(connection))
        _wrap(connection, allowed, guard)
        guard.installed += 1
    return guard


def _wrap(
    connection: aioice.ice.Connection, allowed: Callable[[str], bool], guard: PrflxGuard
) -> None:
    original = connection.request_received

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if not allowed(addr[0]):
            guard.dropped += 1
            return
        original(message, addr, protocol)

    connection.request_received = request_received  # type: ignore[method-assign]

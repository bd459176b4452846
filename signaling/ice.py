"""The port through which a room gets the browsers' ICE servers.

TURN credentials are derived from a secret the signalling layer must never hold, so the room
asks a provider (``server.turn``) for each participant as they are let in, and puts what it
gets on ``joined``/``admitted``. A provider is called again on every (re)join, so a page that
comes back after the last credential expired gets a fresh one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from . import messages as m


@dataclass(frozen=True)
class IceGrant:
    """What one admitted participant's browser may use to reach the media server."""

    servers: tuple[m.IceServer, ...] = field(default_factory=tuple)
    transport_policy: m.IceTransportPolicy = "all"
    #: Seconds the TURN credentials in ``servers`` stay valid (None: nothing expires). The
    #: page asks for fresh ones (``ice_refresh``) when it rebuilds its connection late.
    ttl_s: int | None = None


class IceProvider(Protocol):
    """ICE servers for ``actor`` (``"user:3"``, ``"client:7"``) in ``session_id``, issued now."""

    def __call__(self, session_id: str, actor: str) -> IceGrant: ...


def no_ice(session_id: str, actor: str) -> IceGrant:
    """Host candidates only: enough on a LAN or one machine, the default for tests."""
    return IceGrant()

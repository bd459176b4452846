"""Who takes part in a call and how their media is doing: the one definition of each.

Lives at the bottom of ``media`` with no heavy imports so that the signalling messages, the
server's models and every media subsystem can share it without loading numpy or aiortc. The
string values are the wire format (browser JS and stored rows use them), so they never change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

__all__ = ["ROLES", "MediaState", "Role", "other_role"]


class Role(StrEnum):
    """A participant's part in a session; a ``str`` so it compares equal to its wire value."""

    THERAPIST = "therapist"
    CLIENT = "client"


#: Canonical order; also the signal engine's tie-break for segments starting on one frame.
ROLES: tuple[Role, Role] = (Role.THERAPIST, Role.CLIENT)

#: A participant's WebRTC media as the relay sees it (and as the peer's tile shows it).
#: "no_media": in the call, yet media has not connected within the allowed time (a blocked
#: network or browser); the relay never reports it, the room does (it knows how long).
MediaState = Literal["none", "connecting", "connected", "lost", "no_media"]


def other_role(role: Role | str) -> Role:
    """The other participant: a call has exactly two."""
    return Role.CLIENT if role == Role.THERAPIST else Role.THERAPIST

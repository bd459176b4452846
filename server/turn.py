"""Time-limited TURN credentials, coturn's REST scheme (``use-auth-secret``).

Rapport and coturn share one secret and never talk to each other: Rapport derives, for each
admitted participant, ``username = "<unix expiry>:<opaque id>"`` and
``credential = base64(HMAC-SHA1(secret, username))``; coturn recomputes the HMAC and refuses
the allocation once the expiry has passed. A credential copied out of a browser is therefore
worth a relay for one lifetime only, and the secret itself never leaves this process.

coturn checks the credential when an allocation is created, not while it lives, so a call
already relayed survives its credential's expiry; the lifetime only has to cover the page
building (or rebuilding) its peer connection during the call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from signaling.ice import IceGrant
from signaling.messages import IceServer, IceTransportPolicy

if TYPE_CHECKING:
    from .settings import Settings

# Keyed separately from the credential HMAC so the opaque id reveals nothing about it.
_ID_CONTEXT = b"rapport turn id\x00"


def turn_credential(secret: str, username: str) -> str:
    """The password coturn expects for ``username`` under ``static-auth-secret``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def opaque_id(secret: str, session_id: str, actor: str) -> str:
    """A pseudonym for one participant in one session, for coturn's logs.

    It is stable across that participant's rejoins (an operator can follow one person's
    allocations through a call) but unlinkable across sessions and carries no name, email or
    database id: coturn's log is outside Rapport's privacy boundary.
    """
    message = _ID_CONTEXT + session_id.encode() + b"\x00" + actor.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:20]


def turn_username(expires_at: int, opaque: str) -> str:
    return f"{expires_at}:{opaque}"


class TurnIssuer:
    """The room's ICE provider: static servers, STUN, and a fresh TURN credential per call.

    Built from settings at start; the room calls it with a session and an audit actor when a
    participant is let in (see ``signaling.ice.IceProvider``).
    """

    def __init__(
        self,
        *,
        turn_urls: Sequence[str] = (),
        secret: str | None = None,
        ttl_s: int = 4 * 3600,
        stun_urls: Sequence[str] = (),
        static_servers: Sequence[dict[str, Any]] = (),
        transport_policy: IceTransportPolicy = "all",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if turn_urls and not secret:
            raise ValueError("TURN URLs need a secret to derive credentials from")
        if ttl_s <= 0:
            raise ValueError("the TURN credential lifetime must be positive")
        self._turn_urls = list(turn_urls)
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._fixed = tuple(IceServer.model_validate(s) for s in static_servers) + (
            (IceServer(urls=list(stun_urls)),) if stun_urls else ()
        )
        self._policy: IceTransportPolicy = transport_policy

    def __call__(self, session_id: str, actor: str) -> IceGrant:
        servers = self._fixed
        ttl_s: int | None = None
        if self._turn_urls and self._secret:
            ttl_s = self._ttl_s
            expires_at = int(self._clock()) + self._ttl_s
            username = turn_username(expires_at, opaque_id(self._secret, session_id, actor))
            servers += (
                IceServer(
                    urls=list(self._turn_urls),
                    username=username,
                    credential=turn_credential(self._secret, username),
                ),
            )
        return IceGrant(servers=servers, transport_policy=self._policy, ttl_s=ttl_s)

    def __repr__(self) -> str:  # never the secret, should the issuer end up in a log line
        return f"TurnIssuer(turn_urls={self._turn_urls!r}, ttl_s={self._ttl_s})"


def turn_issuer(settings: Settings) -> TurnIssuer:
    secret = settings.turn_secret.get_secret_value() if settings.turn_secret else None
    return TurnIssuer(
        turn_urls=settings.turn_urls,
        secret=secret,
        ttl_s=settings.turn_ttl_s,
        stun_urls=settings.stun_urls,
        static_servers=settings.ice_servers,
        transport_policy=settings.ice_transport_policy,
    )

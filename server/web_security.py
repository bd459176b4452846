"""Browser-facing protections: same-origin writes, the content policy, who may read /metrics."""

from __future__ import annotations

import ipaddress
import secrets
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from .settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# Every script and style is a file under /static; nothing inline, nothing from elsewhere.
# 'self' covers the same-host WebSocket (CSP level 3).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request, settings: Settings) -> bool:
    """Whether an unsafe request comes from one of our own pages.

    SameSite=Lax cookies still travel with requests from another port of the same host (same
    site, other origin), so a page there could rotate invite links. Browsers send Origin on
    such requests; when it is absent, Referer is checked; clients that send neither (scripts,
    the CLI) are not browsers riding someone's cookies.
    """
    claimed = request.headers.get("origin")
    if claimed is None or claimed == "null":
        referer = request.headers.get("referer")
        if referer is None:
            return claimed is None
        claimed = _origin_of(referer) or ""
    allowed = {_origin_of(settings.public_url), _origin_of(str(request.base_url))}
    return claimed.lower() in allowed


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_refusal(request: Request, settings: Settings) -> Response | None:
    """/metrics shows when sessions are live: with RAPPORT_METRICS_TOKEN set, a matching
    bearer token is required; without one, only this machine may read it."""
    if settings.metrics_token:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.metrics_token}"
        if secrets.compare_digest(given.encode(), expected.encode()):
            return None
        return JSONResponse(
            {"detail": "A bearer token is required."},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if _loopback(request.client.host if request.client else None):
        return None
    return JSONResponse(
        {"detail": "Metrics are served to this machine only; set RAPPORT_METRICS_TOKEN."},
        status_code=403,
    )

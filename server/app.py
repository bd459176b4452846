"""Application assembly: settings, database, rooms, routers, static files."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from media import MediaConfig, MediaWorkerPool, restrict_host_addresses
from signaling.limits import Limits
from signaling.rooms import RoomRegistry

from .alliance_hub import SignalsHub
from .db import Database
from .hooks import DatabaseRoomHooks
from .models import SetupToken, User
from .ops import CpuMeter, Metrics, loop_lag_monitor
from .quality_hub import QualityHub
from .routes import admin, auth, checkin, pages, preferences, sessions, summary, ws
from .security import new_token, token_hash
from .settings import Settings

log = logging.getLogger("rapport")


async def first_run_setup_link(database: Database, settings: Settings) -> str | None:
    """With no accounts yet, mint a one-time setup link (there is no default password)."""
    async with database.session() as db:
        if await db.scalar(select(func.count()).select_from(User)):
            return None
        token = new_token()
        db.add(
            SetupToken(
                token_hash=token_hash(token), expires_at=datetime.now(UTC) + timedelta(hours=24)
            )
        )
        await db.commit()
    return settings.public(f"/setup/{token}")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    database = Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await database.create_schema()
        restrict_host_addresses(settings.media_addresses)
        link = await first_run_setup_link(database, settings)
        if link:
            print(
                f"\n  No accounts yet. Create the first one here (valid 24 h, once):\n  {link}\n",
                flush=True,
            )
        app.state.draining = False
        if pool is not None:
            await pool.start()
        signals.start()
        loop_lag.start()
        quality.start()
        yield
        app.state.draining = True
        await quality.stop()
        await loop_lag.stop()
        await app.state.rooms.close_all()
        if pool is not None:
            await pool.close()
        await signals.close()
        await database.dispose()

    app = FastAPI(title="Rapport", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.database = database
    signals = SignalsHub(database)
    app.state.signals = signals
    media_config = MediaConfig(
        ice_servers=tuple(settings.ice_servers),
        allow_loopback_candidates=settings.allow_loopback_candidates,
        media_addresses=tuple(settings.media_addresses),
        relay_mode=settings.relay_mode,
    )
    workers = settings.media_worker_count
    pool = MediaWorkerPool(media_config, workers, log_level=settings.log_level) if workers else None
    app.state.media_pool = pool
    app.state.rooms = RoomRegistry(
        DatabaseRoomHooks(database, signals),
        media_config,
        Limits(
            max_message_bytes=settings.max_message_bytes,
            messages_per_second=settings.max_messages_per_second,
            reconnect_grace_s=settings.reconnect_grace_s,
        ),
        signals_for=signals.for_session,
        call_factory=pool.call if pool is not None else None,
    )
    signals.rooms = app.state.rooms
    metrics = Metrics()
    quality = QualityHub(app.state.rooms, metrics, database)
    app.state.rooms.observer = quality
    loop_lag = loop_lag_monitor(metrics)
    app.state.metrics = metrics
    app.state.quality = quality
    app.state.loop_lag = loop_lag
    app.state.cpu = CpuMeter()

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        # Invite tokens live in URLs: never leak them through the Referer header.
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Permissions-Policy", "camera=(self), microphone=(self), geolocation=()"
        )
        return response

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        media = pool is None or any(w.alive for w in pool.workers)
        ok = media and await database.ping() and not getattr(app.state, "draining", False)
        return JSONResponse({"ready": ok, "media": media}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in (
        auth.router,
        sessions.router,
        summary.router,
        preferences.router,
        checkin.router,
        admin.router,
        ws.router,
        pages.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=settings.web_dir), name="static")
    return app

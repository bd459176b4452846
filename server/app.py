"""Application assembly: settings, database, rooms, routers, static files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import func, select

from media import MediaConfig, MediaWorkerPool, restrict_host_addresses
from signaling.limits import ConnectLimiter, Limits
from signaling.room import LobbyLimits
from signaling.rooms import RoomRegistry

from .access_log import AccessLog
from .alliance_hub import SignalsHub
from .body_limit import BodySizeLimit
from .cluster import cluster_for, register_node_metrics
from .cluster import routes as cluster_routes
from .db import Database
from .hooks import DatabaseRoomHooks
from .lifecycle import Drain, Reaper
from .models import SetupToken, User
from .ops import CpuMeter, Metrics, loop_lag_monitor
from .quality_hub import QualityHub
from .routes import admin, auth, checkin, clients, pages, preferences, sessions, summary, ws
from .security import new_token, token_hash
from .settings import Settings
from .throttle import LoginThrottle
from .turn import turn_issuer
from .web_security import (
    CONTENT_SECURITY_POLICY,
    SAFE_METHODS,
    metrics_refusal,
    same_origin,
)

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


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped off the event loop
        return 0


def start_drain(app: FastAPI) -> Drain:
    """Stop taking new sessions and joins; the returned drain's ``run`` waits for the calls."""
    app.state.draining = True
    drain: Drain = app.state.drain
    return drain


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    database = Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await database.create_schema()
        restrict_host_addresses(settings.media_addresses)
        # Printed by `rapport serve` once its port is bound (server.cli), not before.
        app.state.setup_link = await first_run_setup_link(database, settings)
        app.state.draining = False
        if pool is not None:
            log.info("starting %d media worker process(es)", pool.size)
            await pool.start()
        signals.start()
        loop_lag.start()
        quality.start()
        reaper.start()
        if cluster is not None:
            await cluster.start()
        yield
        app.state.draining = True
        await reaper.stop()
        await quality.stop()
        await loop_lag.stop()
        if cluster is not None:
            # Saved, then the leases given up, then the sockets closed: the pages reconnect
            # to a room placed on a live node at once (the next host resumes these signals).
            await signals.flush()
            await cluster.hand_over()
        await app.state.rooms.close_all(code=1012)
        if pool is not None:
            await pool.close()
        await signals.close()
        if cluster is not None:
            await cluster.stop()  # after the signals are saved: the next host resumes them
        await database.dispose()

    docs = settings.api_docs
    app = FastAPI(
        title="Rapport",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.draining = False
    app.state.settings = settings
    app.state.database = database
    app.state.login_throttle = LoginThrottle(
        settings.login_attempts_per_address, settings.login_attempts_per_account
    )
    signals = SignalsHub(
        database,
        tick_s=settings.signal_tick_ms / 1000.0,
        silero_assist=settings.silero_assist,
    )
    app.state.signals = signals
    app.state.connect_limiter = ConnectLimiter(
        settings.connect_burst, settings.connects_per_minute / 60.0
    )
    media_config = MediaConfig(
        ice_servers=tuple(settings.server_ice_servers),
        allow_loopback_candidates=settings.allow_loopback_candidates,
        allowed_candidate_networks=tuple(settings.allowed_candidate_networks),
        media_addresses=tuple(settings.media_addresses),
        relay_mode=settings.relay_mode,
    )
    workers = settings.media_worker_count
    pool = (
        MediaWorkerPool(
            media_config, workers, log_level=settings.log_level, spare=settings.media_spare_worker
        )
        if workers
        else None
    )
    app.state.media_pool = pool
    room_hooks = DatabaseRoomHooks(database, signals)
    app.state.rooms = RoomRegistry(
        room_hooks,
        media_config,
        Limits(
            max_message_bytes=settings.max_message_bytes,
            messages_per_second=settings.max_messages_per_second,
            reconnect_grace_s=settings.reconnect_grace_s,
        ),
        signals_for=signals.for_session,
        call_factory=pool.call if pool is not None else None,
        ice=turn_issuer(settings),
        lobby=LobbyLimits(
            knock_burst_address=settings.knock_burst_per_address,
            knock_per_second_address=settings.knocks_per_minute_per_address / 60.0,
        ),
    )
    signals.rooms = app.state.rooms
    app.state.rooms.on_room_closed = signals.unload
    # --- cluster (issue 15): several nodes through Redis; None is single-node mode.
    cluster = cluster_for(settings, app)
    app.state.cluster = cluster
    # The drain is started by the server's signal handling (server.cli), or by `start_drain`.
    app.state.drain = Drain(app.state.rooms, signals, settings.drain_timeout_s)
    if cluster is not None:
        app.state.drain.before_close = cluster.hand_over
    reaper = Reaper(database, app.state.rooms, signals, room_hooks, settings.idle_end_after_s)
    app.state.reaper = reaper
    metrics = Metrics()
    quality = QualityHub(app.state.rooms, metrics, database)
    app.state.rooms.observer = quality
    loop_lag = loop_lag_monitor(metrics, settings.loop_lag_interval_s)
    # Leak watch (the soak test reads them): tasks must return to baseline after calls end,
    # and a session's signals must not stay loaded once nobody is in its room.
    Gauge(
        "rapport_asyncio_tasks", "Asyncio tasks in the server process", registry=metrics.registry
    ).set_function(_task_count)
    Gauge(
        "rapport_signal_sessions_loaded",
        "Sessions whose live signals are in memory",
        registry=metrics.registry,
    ).set_function(lambda: len(signals.sessions))
    metrics.watch_media_pool(pool)
    register_node_metrics(metrics.registry, settings.node_id, cluster)
    app.state.metrics = metrics
    app.state.quality = quality
    app.state.loop_lag = loop_lag
    app.state.cpu = CpuMeter()

    hsts = settings.public_url.startswith("https://")

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method not in SAFE_METHODS and not same_origin(request, settings):
            return JSONResponse(
                {"detail": "Cross-site request refused: open Rapport from its own address."},
                status_code=403,
            )
        response = await call_next(request)
        # Invite tokens live in URLs: never leak them through the Referer header.
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Permissions-Policy", "camera=(self), microphone=(self), geolocation=()"
        )
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if hsts:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if request.url.path.startswith("/api/"):
            # Clinical data: never kept in a browser's or a proxy's cache.
            response.headers["Cache-Control"] = "no-store"
        return response

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Added last, so outermost of ours: it times and logs everything inside it.
    app.add_middleware(AccessLog, metrics=metrics)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        """Not ready while draining: load balancers stop sending new people here at once."""
        draining = bool(app.state.draining)
        media = pool is None or any(w.alive for w in pool.workers)
        ok = not draining and media and await database.ping()
        body: dict[str, object] = {"ready": ok, "media": media}
        if draining:
            body["draining"] = True
            body["detail"] = "draining: the server is shutting down once its live calls end"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        refused = metrics_refusal(request, settings)
        if refused is not None:
            return refused
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in (
        auth.router,
        sessions.router,
        summary.router,
        clients.router,
        preferences.router,
        checkin.router,
        admin.router,
        ws.router,
        pages.router,
        cluster_routes.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=settings.web_dir), name="static")
    return app

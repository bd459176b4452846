"""Shared fixtures: the app in-process for plain HTTP, or a real server for sockets and media.

Most API tests only need requests and a database; serving them from a uvicorn thread with a
media worker process cost seconds of set-up per test. ``api`` runs the same app (with its
lifespan, on a real SQLite file) behind httpx's ASGI transport instead. ``live_server`` stays
for tests that need real WebSockets, ICE and media workers. ``therapist`` and ``admin`` sign in
on whichever of the two the test uses: the live server when it asks for ``live_server``.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI

from server.app import create_app
from server.db import Database
from server.models import User, UserRole
from server.security import hash_password
from server.settings import Settings
from tests.support import eventually_sync

PASSWORD = "correct horse battery"


DATABASES = ["sqlite", "postgresql"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Database-facing tests run on both engines: every in-process API test (``api``, or
    ``server`` without a live server), and tests marked ``both_databases``. A test may pin
    one engine with ``@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)``."""
    if "db_engine" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "db_engine" in (names.split(",") if isinstance(names, str) else names):
            return
    names = metafunc.fixturenames
    in_process = "api" in names or ("server" in names and "live_server" not in names)
    if in_process or metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("db_engine", DATABASES, indirect=True, ids=DATABASES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run browser tests last.

    Playwright's sync API marks an asyncio loop as running in the main thread for as long as
    its (session-wide) instance lives; every pytest-asyncio test after it would then fail with
    "Runner.run() cannot be called from a running event loop".
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session")
def pw() -> Iterator[Any]:
    """The one Playwright of the run: a second sync Playwright cannot start while one is
    running in this thread, so every browser test launches its browsers from this one."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the run (tests/services.py); each test that needs
    a database calls ``postgres.new_database()`` for its own empty one."""
    from tests.services import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1 for one test (starting one takes ~20 ms)."""
    from tests.services import redis_server

    with redis_server() as server:
        yield server.url


@pytest.fixture
def db_engine(request: pytest.FixtureRequest) -> str:
    """ "sqlite" unless the test runs on both engines (``pytest_generate_tests``)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def db_url(db_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database for this test on the selected engine: a SQLite file in the test's
    directory, or a new database in the run's throwaway PostgreSQL cluster."""
    if db_engine == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}"
    cluster = request.getfixturevalue("postgres")
    template = getattr(cluster, "migrated_template", None)
    if template is None:
        # Migrated once per run; each test's database is a copy (CREATE DATABASE … TEMPLATE),
        # which is faster than migrating an empty one every time (tests/test_database.py
        # migrates empty ones).
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from server.migrations import upgrade

        template_url = cluster.new_database()
        with ThreadPoolExecutor(1) as pool:  # its own loop, whoever's loop runs here
            pool.submit(asyncio.run, upgrade(template_url)).result()
        template = template_url.rsplit("/", 1)[1]
        cluster.migrated_template = template
    url: str = cluster.new_database(template=template)
    return url


@pytest.fixture
def empty_db_url(db_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database (no tables) on the selected engine, for tests of migrations."""
    if db_engine == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("postgres").new_database()
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    settings: Settings
    app: object

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")


def make_settings(
    tmp_path: Path,
    port: int,
    *,
    media_workers: int,
    database_url: str | None = None,
    **extra: Any,
) -> Settings:
    return Settings(
        **extra,
        database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}",
        public_url=f"http://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        media_addresses=["127.0.0.1"],
        allow_loopback_candidates=True,
        log_json=False,
        media_workers=media_workers,
    )


# Sockets but no media: a live server without a media worker process to start (a test that
# never sends an offer needs no worker, and starting one costs about a second of set-up).
NO_MEDIA_WORKER = pytest.mark.parametrize("live_server", [0], indirect=True, ids=["no-worker"])


@pytest.fixture
def live_server(
    tmp_path: Path, db_url: str, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    """A server as deployed: media in one worker process unless a test asks otherwise
    (``@pytest.mark.parametrize("live_server", [0, 2], indirect=True)``; 0 = in-process).

    A dict parameter holds Settings fields (``media_workers`` among them, default 1)."""
    port = free_port()
    param = getattr(request, "param", 1)
    extra = dict(param) if isinstance(param, dict) else {"media_workers": param}
    extra.setdefault("media_workers", 1)
    settings = make_settings(tmp_path, port, database_url=db_url, **extra)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws_max_size=1024 * 1024,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("server did not start")
        return bool(server.started)

    eventually_sync(started, timeout=20, interval=0.02, message="server did not start")
    yield LiveServer(f"http://127.0.0.1:{port}", settings, app)
    server.should_exit = True
    thread.join(timeout=15)


@dataclass
class InProcessApp:
    """The app behind an ASGI transport: requests never touch a socket.

    ``url`` is only the origin the app believes it serves (cookies and invite links use it);
    nothing listens there, and every request made through ``client()`` goes to ``app``.
    """

    url: str
    settings: Settings
    app: FastAPI

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
        return httpx.AsyncClient(
            transport=transport, base_url=kwargs.pop("base_url", self.url), **kwargs
        )


@pytest.fixture
async def api(tmp_path: Path, db_url: str) -> AsyncIterator[InProcessApp]:
    """The app in-process with its lifespan (schema, hubs) and no media worker to start, on
    SQLite and on PostgreSQL (``db_url``)."""
    settings = make_settings(tmp_path, 8000, media_workers=0, database_url=db_url)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield InProcessApp(settings.public_url, settings, app)


Server = LiveServer | InProcessApp


def http_client(server: Server, **kwargs: Any) -> httpx.AsyncClient:
    """A client for either kind of server (the tests' requests read the same for both)."""
    if isinstance(server, InProcessApp):
        return server.client(**kwargs)
    return httpx.AsyncClient(base_url=kwargs.pop("base_url", server.url), **kwargs)


@pytest.fixture
def server(request: pytest.FixtureRequest, db_engine: str) -> Server:
    """The live server if the test asked for one, else the app in-process."""
    chosen: Server = request.getfixturevalue(
        "live_server" if "live_server" in request.fixturenames else "api"
    )
    return chosen


@functools.cache
def fixture_password_hash() -> str:
    """The fixture accounts' hash of ``PASSWORD``: made once per run, at argon2's lowest cost.

    argon2 reads its cost from the hash, so signing in still runs the server's own verification
    (``server.security``), just cheaply. At the production cost each of the run's ~150 fixture
    sign-ins spent ~0.3 s hashing here and ~0.4 s verifying on a busy 2-core machine. Hashes the
    server makes itself (CLI accounts, setup, password changes) keep the production cost, which
    tests/test_security_passwords.py checks; so does an account made with ``full_cost`` for a
    test of what sign-in costs the server (the login flood).
    """
    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash(PASSWORD)


async def add_user(
    settings: Settings, email: str, role: UserRole, *, full_cost: bool = False
) -> None:
    """An account with ``PASSWORD``, hashed cheaply unless a test measures what a sign-in
    costs the server (``full_cost``: the production hash)."""
    database = Database(settings.database_url)
    async with database.session() as db:
        db.add(
            User(
                email=email,
                display_name=email.split("@")[0],
                role=role,
                password_hash=hash_password(PASSWORD) if full_cost else fixture_password_hash(),
            )
        )
        await db.commit()
    await database.dispose()


async def signed_in(server: Server, email: str, role: UserRole) -> httpx.AsyncClient:
    await add_user(server.settings, email, role)
    client = http_client(server, timeout=10)
    response = await client.post("/api/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return client


@pytest.fixture
async def therapist(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    client = await signed_in(server, "dr.t@example.org", UserRole.THERAPIST)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    client = await signed_in(server, "ops@example.org", UserRole.ADMIN)
    yield client
    await client.aclose()

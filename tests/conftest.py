"""Shared fixtures: a real Rapport server on 127.0.0.1 in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.db import Database
from server.models import User, UserRole
from server.security import hash_password
from server.settings import Settings

PASSWORD = "correct horse battery"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run browser tests last.

    Playwright's sync API marks an asyncio loop as running in the main thread for as long as
    its (session-wide) instance lives; every pytest-asyncio test after it would then fail with
    "Runner.run() cannot be called from a running event loop".
    """
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


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


def make_settings(tmp_path: Path, port: int, **overrides: object) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}",
        public_url=f"http://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        media_addresses=["127.0.0.1"],
        allow_loopback_candidates=True,
        log_json=False,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def live_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """A server as deployed: media in one worker process unless a test asks otherwise
    (``@pytest.mark.parametrize("live_server", [0, 2], indirect=True)``; 0 = in-process)."""
    port = free_port()
    settings = make_settings(tmp_path, port, media_workers=getattr(request, "param", 1))
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
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}", settings, app)
    server.should_exit = True
    thread.join(timeout=15)


async def add_user(settings: Settings, email: str, role: UserRole) -> None:
    database = Database(settings.database_url)
    async with database.session() as db:
        db.add(
            User(
                email=email,
                display_name=email.split("@")[0],
                role=role,
                password_hash=hash_password(PASSWORD),
            )
        )
        await db.commit()
    await database.dispose()


async def signed_in(server: LiveServer, email: str, role: UserRole) -> httpx.AsyncClient:
    await add_user(server.settings, email, role)
    client = httpx.AsyncClient(base_url=server.url, timeout=10)
    response = await client.post("/api/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return client


@pytest.fixture
async def therapist(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    client = await signed_in(live_server, "dr.t@example.org", UserRole.THERAPIST)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    client = await signed_in(live_server, "ops@example.org", UserRole.ADMIN)
    yield client
    await client.aclose()


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)

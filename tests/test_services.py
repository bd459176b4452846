"""The throwaway PostgreSQL and Redis that database and cluster tests stand on really work."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import text

from server.db import Database


async def test_postgres_database_is_real_and_isolated(postgres: Any) -> None:
    first, second = postgres.new_database(), postgres.new_database()
    assert first != second
    db = Database(first)
    async with db.session() as session:
        await session.execute(text("CREATE TABLE t (x int)"))
        await session.execute(text("INSERT INTO t VALUES (41), (1)"))
        await session.commit()
        total = (await session.execute(text("SELECT sum(x) FROM t"))).scalar_one()
        version = (await session.execute(text("SHOW server_version"))).scalar_one()
    await db.dispose()
    assert total == 42
    assert version.startswith("15")
    assert postgres.psql("SELECT count(*) FROM t", database=urlparse(first).path[1:]).strip() == "2"
    assert (
        postgres.psql(
            "SELECT count(*) FROM pg_tables WHERE tablename = 't'",
            database=urlparse(second).path[1:],
        ).strip()
        == "0"
    )


def test_redis_answers_on_loopback(redis_url: str) -> None:
    port = urlparse(redis_url).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        reply = b""
        while not reply.endswith(b"v1\r\n"):
            chunk = sock.recv(100)
            assert chunk, reply
            reply += chunk
    assert reply == b"+OK\r\n$2\r\nv1\r\n"

"""Throwaway PostgreSQL and Redis instances for tests, from Debian's packages, on 127.0.0.1.

Tests that need a real database server or a real Redis start one here, in a temporary
directory, on a free port of 127.0.0.1, and stop it afterwards: nothing touches a system
service or any address off this machine. PostgreSQL refuses to run as root, so when the tests
run as root (CI) its programs run as Debian's ``postgres`` user with a data directory owned by
that user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PG_ROOTS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, deadline_s: float = 30) -> None:
    """Poll until the server accepts TCP connections; a server that died fails at once."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {deadline_s} s")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``: a test's server never
    outlives the test."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def postgres_available() -> bool:
    return bool(PG_ROOTS) and (PG_ROOTS[0] / "initdb").exists()


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PostgresCluster:
    """One running throwaway cluster; ``new_database()`` gives each test its own database."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    databases: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            _as_postgres(
                [
                    str(PG_ROOTS[0] / "psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-qAt",
                    "-c",
                    sql,
                ]
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )
        return out.stdout.decode()

    def new_database(self, template: str | None = None) -> str:
        """Create an empty database (or a copy of ``template``) and return its SQLAlchemy
        asyncpg URL."""
        name = f"rapport_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.databases.append(name)
        return self.url(name)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """initdb + postgres on a free port of 127.0.0.1 (trust auth, no Unix socket), stopped after."""
    if not postgres_available():
        raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`)")
    bin_dir = PG_ROOTS[0]
    directory = Path(tempfile.mkdtemp(prefix="rapport-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = _free_port()
    proc = subprocess.Popen(
        _as_postgres(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                "",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "postgres.log", "wb"),
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, "postgres")
        cluster = PostgresCluster(port=port, directory=directory, process=proc)
        # Listening is not yet accepting queries during recovery start-up: wait for a query.
        end = time.monotonic() + 30
        while True:
            try:
                cluster.psql("SELECT 1")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        yield cluster
    finally:
        stop_process(proc, 20)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Debian's redis-server on a free port of 127.0.0.1, no persistence, stopped after."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("Redis is not installed (Debian package `redis-server`)")
    directory = Path(tempfile.mkdtemp(prefix="rapport-redis-"))
    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, "redis-server")
        yield RedisServer(port=port, process=proc)
    finally:
        stop_process(proc, 10)
        shutil.rmtree(directory, ignore_errors=True)

"""`rapport serve` as a subprocess, as deployed: its own process, signals, media workers and
SQLite file, on 127.0.0.1. Shared by the browser tests (one server per run) and the lifecycle
tests (a server per test, which they signal and watch exit).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import eventually_sync

REPO_ROOT = Path(__file__).resolve().parents[1]

THERAPIST_EMAIL = "therapist@example.test"
THERAPIST_PASSWORD = "quiet-harbour-2417"
ADMIN_EMAIL = "admin@example.test"
ADMIN_PASSWORD = "steady-lantern-9035"
# For tests that exercise HTTP only: no media worker processes to start.
NO_MEDIA = {"RAPPORT_MEDIA_WORKERS": "0"}
USERS = (
    (THERAPIST_EMAIL, THERAPIST_PASSWORD, "therapist", "Dr. Ellis Moreau"),
    (ADMIN_EMAIL, ADMIN_PASSWORD, "admin", "Sam Admin"),
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RapportServer:
    base_url: str
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running server process (started by ``rapport_server_process``)."""
        assert self.proc is not None, "the server was never started"
        return self.proc

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def database_url(self) -> str:
        return self.env["RAPPORT_DATABASE_URL"]

    def rss_kib(self) -> int:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def start(self) -> None:
        """Start `rapport serve` on this port and database; return once /healthz answers.

        Called again after ``kill()`` it is a restart on the same port and database."""
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited with {proc.returncode} before it was ready:\n{self.log_tail()}"
                )
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually_sync(
            healthy,
            timeout=60,  # media workers start slowly on a busy machine
            interval=0.2,
            message=lambda: f"server not healthy:\n{self.log_tail()}",
        )

    def log_tail(self, max_chars: int = 20_000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return text[-max_chars:]

    def cli(
        self, *args: str, stdin: str = "", timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            input=stdin,
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def add_user(
        self, email: str, password: str, role: str = "therapist", name: str = "Dr. Rey"
    ) -> tuple[str, str]:
        """Another account, through the CLI as an operator would (one per test that counts
        its own sessions, so tests sharing a server do not see each other's)."""
        result = self.cli("user", "add", email, "--role", role, "--name", name,
                          stdin=f"{password}\n")  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"`user add {email}` failed:\n{result.stdout}\n{result.stderr}")
        return email, password

    def add_users(self, accounts: tuple[tuple[str, str, str, str], ...]) -> None:
        """Accounts (email, password, role, name) through the CLI's own ``user add``, all in
        one interpreter: each ``rapport`` command spends ~1 s importing before it starts."""
        argvs = [["user", "add", email, "--role", role, "--name", name]
                 for email, _, role, name in accounts]  # fmt: skip
        # Not a tty, so each `user add` reads one line of stdin (a tty would prompt twice).
        code = f"import sys, server.cli\nsys.exit(max([server.cli.main(a) for a in {argvs!r}]))"
        result = subprocess.run(
            [sys.executable, "-c", code],
            input="".join(f"{password}\n" for _, password, _, _ in accounts),
            cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"`user add` failed:\n{result.stdout}\n{result.stderr}")
        for email, password, role, _ in accounts:
            self.users[role] = (email, password)

    def signed_in(self, email: str, password: str) -> httpx.Client:
        """An HTTP client signed in as ``email`` (close it when done)."""
        http = httpx.Client(base_url=self.base_url, timeout=10)
        res = http.post("/api/login", json={"email": email, "password": password})
        assert res.status_code == 200, res.text
        return http

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs, sockets just die."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Terminate (the server drains, with no calls it exits at once); kill if stuck."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@contextlib.contextmanager
def rapport_server_process(
    tmp: Path, env: dict[str, str] | None = None, *, accounts: bool = True
) -> Iterator[RapportServer]:
    """Start a server with a therapist and an admin account (unless ``accounts`` is false);
    stop it on exit.

    ``env`` adds or overrides ``RAPPORT_*`` settings for this server.
    """
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'rapport.db'}",
        "RAPPORT_PUBLIC_URL": base_url,
        # JSON form: the server's Settings cannot parse the plain "127.0.0.1" form of a list
        # (pydantic-settings JSON-decodes list fields before the comma-splitting validator).
        "RAPPORT_MEDIA_ADDRESSES": '["127.0.0.1"]',
        "RAPPORT_ALLOW_LOOPBACK_CANDIDATES": "true",
        "RAPPORT_LOG_JSON": "false",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_path = tmp / "server.log"
    log_path.write_bytes(b"")
    server = RapportServer(base_url=base_url, env=full_env, log_path=log_path, port=port)
    try:
        server.start()
        if accounts:
            server.add_users(USERS)
        yield server
    finally:
        server.stop()

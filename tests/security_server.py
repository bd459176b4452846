"""A ``rapport serve`` child process for the security tests.

Floods and oversized bodies are measured against a server in its own process, as deployed, so
the test's own client work neither shares the server's event loop and GIL nor counts in its
memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.support import eventually_sync

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ChildServer:
    url: str
    process: subprocess.Popen[bytes]
    database_url: str

    def rss_kib(self) -> int:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")


@contextmanager
def child_server(tmp_path: Path, **env: str) -> Iterator[ChildServer]:
    port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}"
    child_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAPPORT_DATABASE_URL": database_url,
        "RAPPORT_PORT": str(port),
        "RAPPORT_HOST": "127.0.0.1",
        "RAPPORT_MEDIA_WORKERS": "0",
        "RAPPORT_LOG_JSON": "false",
        **env,
    }
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        cwd=tmp_path,
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError((tmp_path / "server.log").read_text())
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually_sync(ready, timeout=30, interval=0.1, message="child server did not start")
        yield ChildServer(url, process, database_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

"""An oversized request body is refused before the server buffers it (issue 12, item 5).

Measured on a ``rapport serve`` child process: its resident memory before and after a 50 MB
POST to /api/login, once with a declared Content-Length and once streamed chunked (no length
to check up front, so the bytes are counted as they arrive).
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.conftest import InProcessApp
from tests.server_process import NO_MEDIA, RapportServer, rapport_server_process

FIFTY_MB = 50 * 1024 * 1024
CHUNK = b"x" * (64 * 1024)


def post_huge(server: RapportServer, *, chunked: bool) -> bytes:
    """Send up to 50 MB as fast as the server takes it; return what the server answered."""
    port = int(server.url.rsplit(":", 1)[1])
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {FIFTY_MB}"
    head = (
        f"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{length}\r\n\r\n"
    ).encode()
    frame = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n" if chunked else CHUNK
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < FIFTY_MB:
                sock.sendall(frame)
                sent += len(CHUNK)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: what we want
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    print(f"\n{'chunked' if chunked else 'content-length'}: sent {sent / 2**20:.1f} MiB")
    return answer


def test_fifty_megabyte_login_post_is_refused_cheaply(tmp_path: Path) -> None:
    with rapport_server_process(tmp_path, NO_MEDIA, accounts=False) as server:
        httpx.get(f"{server.url}/login")  # warm up the routes once
        before = server.rss_kib()
        declared = post_huge(server, chunked=False)
        streamed = post_huge(server, chunked=True)
        after = server.rss_kib()
        still_up = httpx.get(f"{server.url}/healthz").status_code
    growth_mb = (after - before) / 1024
    print(f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB (+{growth_mb:.1f} MiB)")
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"too large" in declared
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    assert still_up == 200
    assert growth_mb < 30


async def test_body_under_the_cap_still_works_and_over_it_is_a_json_413(
    api: InProcessApp,
) -> None:
    async with api.client() as client:
        ok = await client.post(
            "/api/login", json={"email": "a@example.org", "password": "x" * 1000}
        )
        assert ok.status_code == 401
        big = await client.post(
            "/api/login",
            content=b'{"email": "a@example.org", "password": "' + b"x" * 70_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
        assert big.json() == {"detail": "The request body is too large (the limit is 64 KiB)."}

        async def stream():  # no Content-Length: counted as it arrives
            for _ in range(5):
                yield b"x" * 20_000

        streamed = await client.post("/api/login", content=stream())
        assert streamed.status_code == 413

"""/metrics as an operator's Prometheus scrapes it: process, HTTP and media-worker families."""

from __future__ import annotations

import os
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from media.workers.pool import MediaWorkerPool
from tests.conftest import LiveServer
from tests.media_helpers import FakeBrowser
from tests.signaling_helpers import open_room
from tests.support import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_carry_process_http_and_media_worker_families(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    missing = await therapist.get("/api/sessions/0123456789abcdef")
    assert missing.status_code == 404
    route = "/api/sessions/{session_id}"

    async def counted() -> Samples | None:
        # A request is counted once its response has gone out, which can be just after the
        # client has read it: poll rather than scrape once.
        now = await scrape(therapist)
        hit = value(now, "rapport_http_requests_total", method="GET", route=route, status="404")
        return now if hit else None

    samples = await eventually(counted, timeout=10, interval=0.1, message="the 404 counted")
    # Process and runtime collectors.
    assert (value(samples, "process_resident_memory_bytes") or 0) > 10_000_000
    assert value(samples, "process_cpu_seconds_total") is not None
    assert value(samples, "process_open_fds") is not None
    assert any(name == "python_info" for name, _ in samples)
    assert any(name == "python_gc_collections_total" for name, _ in samples)
    # HTTP by route template, never by concrete path.
    assert value(samples, "rapport_http_requests_total", method="GET", route=route, status="404")
    assert value(samples, "rapport_http_request_duration_seconds_count", method="GET", route=route)
    assert not any("0123456789abcdef" in str(labels) for _, labels in samples)
    # Media workers: alive, load, restarts.
    assert value(samples, "rapport_media_workers") == 1
    assert value(samples, "rapport_media_worker_alive", worker="0") == 1
    assert value(samples, "rapport_media_worker_calls", worker="0") == 0
    assert value(samples, "rapport_media_worker_restarts_total") == 0

    _session, t, c, _ = await open_room(live_server.ws_url, therapist)
    try:
        await t.start_media(FakeBrowser())

        async def one_call() -> Samples | None:
            now = await scrape(therapist)
            return now if value(now, "rapport_media_worker_calls", worker="0") == 1 else None

        await eventually(one_call, timeout=20, interval=0.2, message="1 call on worker 0")
        pool: MediaWorkerPool = live_server.app.state.media_pool  # type: ignore[attr-defined]
        dead_pid = pool.workers[0].pid
        assert dead_pid is not None
        os.kill(dead_pid, signal.SIGKILL)

        async def replaced() -> Samples | None:
            now = await scrape(therapist)
            restarted = value(now, "rapport_media_worker_restarts_total") == 1
            alive = value(now, "rapport_media_worker_alive", worker="0") == 1
            return now if restarted and alive and pool.workers[0].pid != dead_pid else None

        await eventually(replaced, timeout=30, interval=0.2, message="worker replaced, counted")
    finally:
        await t.close()
        await c.close()


async def test_websocket_connections_are_counted_by_route_template(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    session, t, c, _ = await open_room(live_server.ws_url, therapist)
    await t.close()
    await c.close()

    async def counted() -> Samples | None:
        now = await scrape(therapist)
        join = value(
            now, "rapport_http_requests_total", method="WEBSOCKET", route="/ws/join/{token}",
            status="101",
        )  # fmt: skip
        return now if join == 1 else None

    samples = await eventually(counted, timeout=10, message="the client's socket counted")
    assert not any(session["invite_url"].rsplit("/", 1)[1] in str(k) for k in samples)

"""Operational metrics (Prometheus) and event-loop lag. Counts and timings, no content."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from media import LoopLagSampler


class Metrics:
    """One registry per app, so several apps (tests) can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_sessions = Gauge(
            "rapport_active_sessions", "Sessions with someone connected", registry=r
        )
        self.participants = Gauge(
            "rapport_participants", "Participants in calls", ["role"], registry=r
        )
        # A seat held for reconnection is not a participant in the call (issue 16).
        self.participants_reconnecting = Gauge(
            "rapport_participants_reconnecting",
            "Seats held for a participant whose connection dropped",
            ["role"],
            registry=r,
        )
        self.peer_connections = Gauge(
            "rapport_peer_connections", "Open server peer connections", registry=r
        )
        self.quality_labels = Gauge(
            "rapport_quality_label_participants",
            "Participants per current quality label",
            ["label"],
            registry=r,
        )
        self.rtt = Histogram(
            "rapport_rtt_seconds",
            "Round-trip time to participants",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
            registry=r,
        )
        self.loss = Histogram(
            "rapport_packet_loss_ratio",
            "Packet loss per 2 s sample",
            ["direction"],
            buckets=(0.001, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.5),
            registry=r,
        )
        self.jitter = Histogram(
            "rapport_jitter_seconds",
            "Audio jitter",
            ["direction"],
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2),
            registry=r,
        )
        self.loop_lag = Histogram(
            "rapport_event_loop_lag_seconds",
            "Event-loop scheduling lag",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.messages = Counter(
            "rapport_signaling_messages_total", "Signalling messages received", ["type"], registry=r
        )
        self.errors = Counter(
            "rapport_signaling_errors_total", "Signalling errors sent", ["code"], registry=r
        )
        self.media_restarts = Counter(
            "rapport_media_restarts_total",
            "Calls whose participants were told to re-offer (a media worker died, media lost)",
            ["reason"],
            registry=r,
        )
        self.media_states = Gauge(
            "rapport_participant_media_state",
            "Participants in calls per media state (no_media: never connected in time)",
            ["state"],
            registry=r,
        )
        # --- obs: process, HTTP and media-worker families
        # process_* (CPU seconds, resident memory, open fds, start time), python_info, python_gc_*
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.http_requests = Counter(
            "rapport_http_requests_total",
            "HTTP requests and WebSocket connections by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "rapport_http_request_duration_seconds",
            "HTTP request duration by method and route template (WebSockets not included)",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, duration_s: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        if method != "WEBSOCKET":  # a socket's duration is the call's, not a latency
            self.http_duration.labels(method, route).observe(duration_s)

    def watch_media_pool(self, pool: Any) -> None:
        """Worker liveness, load and restarts, read from the pool at every scrape."""
        self.registry.register(MediaPoolCollector(lambda: pool))


class MediaPoolCollector(Collector):
    """``rapport_media_worker_*``: read at scrape time, so nothing has to keep gauges in step
    with workers dying and being replaced. Without a pool (RAPPORT_MEDIA_WORKERS=0) the
    families are there with no workers, so dashboards and alerts still find them."""

    def __init__(self, pool: Callable[[], Any]) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        pool = self._pool()
        workers = list(pool.workers) if pool is not None else []
        alive = GaugeMetricFamily(
            "rapport_media_worker_alive",
            "1 if the media worker process is running",
            labels=["worker"],
        )
        calls = GaugeMetricFamily(
            "rapport_media_worker_calls", "Calls pinned to each media worker", labels=["worker"]
        )
        for worker in workers:
            alive.add_metric([str(worker.index)], 1.0 if worker.alive else 0.0)
            calls.add_metric([str(worker.index)], float(len(worker.calls)))
        yield alive
        yield calls
        yield GaugeMetricFamily(
            "rapport_media_workers", "Media worker processes configured", value=len(workers)
        )
        yield CounterMetricFamily(
            "rapport_media_worker_restarts",
            "Media worker processes replaced after dying or hanging",
            value=float(pool.restarts if pool is not None else 0),
        )


def loop_lag_monitor(metrics: Metrics, interval_s: float = 0.25) -> LoopLagSampler:
    """The server's own loop lag: every ``interval_s``, two minutes kept, also into Prometheus."""
    return LoopLagSampler(
        interval_s, max(1, round(120 / interval_s)), on_sample=metrics.loop_lag.observe
    )


class CpuMeter:
    """Process CPU use between two reads, as a fraction of one core."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), os.times())

    def read(self) -> float:
        now, times = time.monotonic(), os.times()
        then, prev = self._last
        self._last = (now, times)
        busy = (times.user - prev.user) + (times.system - prev.system)
        return round(busy / (now - then), 3) if now > then else 0.0

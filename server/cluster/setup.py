"""Wiring a node into the app: the cluster object (when Redis is configured) and its metrics."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge

from ..routes.admin import call_quality_here, live_calls_here
from ..settings import Settings
from .node import Cluster
from .wire import (
    Answer,
    Ask,
    CallQualityRead,
    CallsAnswer,
    ClosedAnswer,
    InviteRenewed,
    QualityAnswer,
    SignalsAnswer,
    SignalsRead,
    SignOut,
)


def cluster_for(settings: Settings, app: FastAPI) -> Cluster | None:
    """The node's cluster membership, or None (single-node mode) without RAPPORT_REDIS_URL."""
    if not settings.redis_url:
        return None
    from ..routes.ws import serve_here

    rooms = app.state.rooms
    cluster = Cluster(
        settings.redis_url,
        settings.node_id,
        rooms,
        heartbeat_s=settings.cluster_heartbeat_s,
        node_ttl_s=settings.cluster_node_ttl_s,
        lease_s=settings.cluster_lease_s,
        hosts_rooms=settings.cluster_hosts_rooms,
        draining=lambda: bool(app.state.draining),
        ask_timeout_s=settings.cluster_ask_timeout_s,
    )

    async def serve(session_id: str, status: str, member: Any) -> None:
        await serve_here(app, session_id, status, member)

    cluster.serve_here = serve

    async def answer(ask: Ask) -> Answer:
        """This node's live state, or its part of a revocation, for a request that landed on
        another node."""
        question = ask.question
        if isinstance(question, SignalsRead):
            hub = app.state.signals
            sid = question.session_id
            return SignalsAnswer.model_validate(
                {"snapshot": hub.latest(sid), "timeline": hub.timeline(sid)}
            )
        if isinstance(question, CallQualityRead):
            return QualityAnswer(detail=call_quality_here(app.state.quality, question.session_id))
        if isinstance(question, SignOut):
            closed = await rooms.sign_out(login_hash=question.login_hash, user_id=question.user_id)
            return ClosedAnswer(closed=closed)
        if isinstance(question, InviteRenewed):
            room = rooms.get(question.session_id)
            if room is None:
                return ClosedAnswer()
            closed = await room.invite_renewed(
                question.new_hash, keep_admitted=question.keep_admitted
            )
            return ClosedAnswer(closed=closed)
        async with app.state.database.session() as db:
            return CallsAnswer(calls=await live_calls_here(rooms, app.state.quality, db))

    cluster.answer_here = answer
    unload = rooms.on_room_closed

    async def room_closed(session_id: str) -> None:
        # Save the signals first, then give the lease back: the next host resumes from them.
        if unload is not None:
            await unload(session_id)
        await cluster.room_closed(session_id)

    rooms.on_room_closed = room_closed
    return cluster


def register_node_metrics(
    registry: CollectorRegistry, node_id: str, cluster: Cluster | None
) -> None:
    """``rapport_node_info{node=...}`` on every node (join other series on it by instance),
    and in cluster mode what this node sees of the cluster."""
    Gauge(
        "rapport_node_info", "This node's id in the cluster (always 1)", ["node"], registry=registry
    ).labels(node=node_id).set(1)
    if cluster is None:
        return
    Gauge(
        "rapport_cluster_nodes",
        "Live nodes in the cluster, as of this node's last heartbeat",
        registry=registry,
    ).set_function(lambda: len(cluster.peers))
    Gauge(
        "rapport_cluster_relayed_sockets",
        "Sockets that landed here for rooms hosted on other nodes",
        ["node"],
        registry=registry,
    ).labels(node=node_id).set_function(lambda: len(cluster.outbound))
    Gauge(
        "rapport_cluster_hosted_relayed_sockets",
        "Sockets served in rooms here that landed on other nodes",
        ["node"],
        registry=registry,
    ).labels(node=node_id).set_function(lambda: len(cluster.inbound))

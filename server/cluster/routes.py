"""The admin's view of the cluster: every node with its load and health, and its live calls.

Calls are listed by session id, participant count and start time only (never who is in them),
like the single-node live-calls view.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ..auth import Admin
from .directory import NodeInfo
from .node import Cluster

router = APIRouter()


class ClusterNode(BaseModel):
    info: NodeInfo
    # Seconds since the node's last heartbeat; a healthy node stays under its heartbeat period.
    heartbeat_age_s: float
    healthy: bool


class ClusterView(BaseModel):
    mode: str  # "cluster" or "single"
    this_node: str
    nodes: list[ClusterNode]
    live_calls: int


@router.get("/api/admin/cluster")
async def cluster_view(_admin: Admin, request: Request) -> ClusterView:
    cluster: Cluster | None = request.app.state.cluster
    if cluster is None:
        info = NodeInfo(node_id=request.app.state.settings.node_id)
        rooms = request.app.state.rooms
        info.calls = sum(1 for room in rooms.rooms.values() if room.members)
        node = ClusterNode(info=info, heartbeat_age_s=0.0, healthy=True)
        return ClusterView(
            mode="single", this_node=info.node_id, nodes=[node], live_calls=info.calls
        )
    now = time.time()
    nodes = [
        ClusterNode(
            info=info,
            heartbeat_age_s=round(max(0.0, now - info.seen_at), 3),
            healthy=not info.draining and now - info.seen_at < 3 * cluster.heartbeat_s,
        )
        for info in await cluster.directory.nodes()
    ]
    return ClusterView(
        mode="cluster",
        this_node=cluster.node_id,
        nodes=nodes,
        live_calls=sum(n.info.calls for n in nodes),
    )

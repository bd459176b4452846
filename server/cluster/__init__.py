"""Several Rapport nodes behind one address, coordinated through Redis (issue 15)."""

from .directory import Directory, NodeInfo, least_loaded
from .node import Cluster, RelayChannel, default_node_id
from .setup import cluster_for, register_node_metrics

__all__ = [
    "Cluster",
    "Directory",
    "NodeInfo",
    "RelayChannel",
    "cluster_for",
    "default_node_id",
    "least_loaded",
    "register_node_metrics",
]

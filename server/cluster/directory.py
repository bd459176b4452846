"""The cluster's shared state in Redis: which nodes are alive and how loaded, and which node
hosts each session's room.

Modelled on LiveKit's Redis router: a node's record expires unless its heartbeat renews it, so
a crashed node disappears by itself; a room's placement is a lease the hosting node renews.
Placement is decided by one Lua script, so two nodes asked at the same moment to host the same
session agree on one host: Redis runs scripts one at a time.
"""

from __future__ import annotations

import hashlib
import time

from pydantic import BaseModel
from redis.asyncio import Redis

PREFIX = "rapport:"
NODES = PREFIX + "nodes"


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


def room_key(session_id: str) -> str:
    return f"{PREFIX}room:{session_id}"


def node_channel(node_id: str) -> str:
    """The pub/sub channel carrying relayed sockets' traffic to ``node_id``."""
    return f"{PREFIX}to:{node_id}"


class LiveCallSummary(BaseModel):
    """A live call as admins see it across nodes: load and quality, never who is in it."""

    session_id: str
    participants: int
    started_at: float


class NodeInfo(BaseModel):
    """What a node tells the others (and the admin) about itself, every heartbeat."""

    node_id: str
    calls: int = 0
    rooms: int = 0
    relayed_sockets: int = 0
    cpu: float = 0.0  # fraction of one core used by the server process
    cores: int = 1
    draining: bool = False
    hosts_rooms: bool = True
    started_at: float = 0.0
    seen_at: float = 0.0
    live_calls: list[LiveCallSummary] = []

    @property
    def accepts_rooms(self) -> bool:
        return self.hosts_rooms and not self.draining


# Place a room: keep a live host's lease, else give it to the candidate.
# KEYS[1] room key; ARGV[1] candidate node id, ARGV[2] lease ms, ARGV[3] node key prefix.
# A lease whose node record has expired (the node died) is taken over at once rather than
# waiting for the lease itself to run out.
PLACE = """
local current = redis.call('GET', KEYS[1])
if current and redis.call('EXISTS', ARGV[3] .. current) == 1 then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return ARGV[1]
"""

# Renew (or drop, with ARGV[2] == '0') a lease only if this node still holds it.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
"""


class Directory:
    """Typed access to the Redis keys above; one per node."""

    def __init__(self, redis: Redis, node_ttl_s: float, lease_s: float) -> None:
        self.redis = redis
        self.node_ttl_ms = max(1, int(node_ttl_s * 1000))
        self.lease_ms = max(1, int(lease_s * 1000))
        self._place = redis.register_script(PLACE)
        self._renew = redis.register_script(RENEW)

    async def announce(self, info: NodeInfo) -> None:
        info.seen_at = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(node_key(info.node_id), info.model_dump_json(), px=self.node_ttl_ms)
            pipe.sadd(NODES, info.node_id)
            await pipe.execute()

    async def leave(self, node_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(node_key(node_id))
            pipe.srem(NODES, node_id)
            await pipe.execute()

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes (whose heartbeat has not expired), by id; forgets dead ones."""
        ids = sorted(str(i) for i in await self.redis.smembers(NODES))
        if not ids:
            return []
        raw = await self.redis.mget([node_key(i) for i in ids])
        alive: list[NodeInfo] = []
        dead: list[str] = []
        for node_id, value in zip(ids, raw, strict=True):
            if value is None:
                dead.append(node_id)
            else:
                alive.append(NodeInfo.model_validate_json(value))
        if dead:
            await self.redis.srem(NODES, *dead)
        return alive

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(node_key(node_id)))

    async def host_of(self, session_id: str) -> str | None:
        value = await self.redis.get(room_key(session_id))
        return None if value is None else str(value)

    async def place(self, session_id: str, candidate: str) -> str:
        """The session's host: its live current host, else ``candidate`` (atomically)."""
        host = await self._place(
            keys=[room_key(session_id)], args=[candidate, self.lease_ms, PREFIX + "node:"]
        )
        return str(host)

    async def renew(self, session_id: str, node_id: str) -> bool:
        """Extend this node's lease on the room; False if another node holds it now."""
        return bool(await self._renew(keys=[room_key(session_id)], args=[node_id, self.lease_ms]))

    async def release(self, session_id: str, node_id: str) -> bool:
        return bool(await self._renew(keys=[room_key(session_id)], args=[node_id, "0"]))


def least_loaded(nodes: list[NodeInfo], session_id: str) -> NodeInfo | None:
    """The node a new room should go to: fewest calls per core, then least CPU (in quarters of
    its cores), then a hash of session and node (rendezvous hashing).

    The hash makes every node rank the same way for one session, and spreads a burst of new
    sessions over equally loaded nodes before their heartbeats report the new calls.
    """
    candidates = [n for n in nodes if n.accepts_rooms]
    if not candidates:
        return None

    def rank(node: NodeInfo) -> tuple[float, int, str]:
        spread = hashlib.sha256(f"{session_id}:{node.node_id}".encode()).hexdigest()
        # CPU in quarters of the node's cores: measurement noise must not outrank the hash.
        busy = int(4 * node.cpu / max(1, node.cores))
        return (node.calls / max(1, node.cores), busy, spread)

    return min(candidates, key=rank)

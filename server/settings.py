"""Runtime configuration, read once from ``RAPPORT_*`` environment variables.

A single settings object is passed around (not imported as a global) so tests can run several
servers with different settings in one process.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from signaling.messages import IceServer

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- db: default database location ---
def default_data_dir(environ: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """Where the SQLite database lives unless RAPPORT_DATABASE_URL says otherwise.

    Never the current directory: `rapport user add` run from another directory than
    `rapport serve` would otherwise create (and fill) a second, silent database.
    RAPPORT_DATA_DIR if set; /var/lib/rapport for root (a system service); else the XDG data
    directory of the user (~/.local/share/rapport).
    """
    env = os.environ if environ is None else environ
    if env.get("RAPPORT_DATA_DIR"):
        return Path(env["RAPPORT_DATA_DIR"]).expanduser().resolve()
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/rapport")
    xdg = env.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return base.expanduser().resolve() / "rapport"


def default_database_url() -> str:
    return f"sqlite+aiosqlite:///{default_data_dir() / 'rapport.db'}"


def database_location(url: str) -> str:
    """The database as printed at start: the file, or the server without any password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {parsed.database}"
    return parsed.render_as_string(hide_password=True)


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CPU_MAX = CGROUP_ROOT / "cpu.max"
# cgroup v1 mounts the CPU controller under one of these names (Docker on older hosts, RHEL 7/8,
# Debian before 11, Kubernetes nodes still on v1).
_CGROUP_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def cgroup_cpu_quota(cpu_max: Path, root: Path) -> float | None:
    """Cores' worth of CPU time this cgroup may use (v2 ``cpu.max``, else v1's CFS quota), or
    None when no quota is set or visible."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass  # not cgroup v2 (or not visible): try v1
    for name in _CGROUP_V1_CPU_DIRS:
        try:
            v1_quota = int((root / name / "cpu.cfs_quota_us").read_text())
            v1_period = int((root / name / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if v1_quota <= 0 or v1_period <= 0 else v1_quota / v1_period  # -1: none
    return None


def usable_cores(cpu_max: Path | None = None, *, cgroup_root: Path | None = None) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (v2 or v1).

    In a container started with ``--cpus=2`` on a 16-core host the affinity still lists 16
    CPUs; one media worker per listed CPU would then be 16 processes sharing two cores.
    """
    root = cgroup_root or (cpu_max.parent if cpu_max is not None else CGROUP_ROOT)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    quota = cgroup_cpu_quota(cpu_max or root / "cpu.max", root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _private_networks() -> tuple[str, ...]:
    from media import PRIVATE_NETWORKS  # media code loads when settings are made, not imported

    return PRIVATE_NETWORKS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    # JSON list of RTCIceServer dicts handed to admitted browsers as they are (fixed
    # credentials). Empty means host candidates only (fine on a LAN or localhost).
    ice_servers: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)
    # TURN with time-limited credentials (coturn's use-auth-secret / static-auth-secret): the
    # server URLs (turn:host:3478?transport=udp, turns:host:5349?transport=tcp), the shared
    # secret, and how long each credential is valid. coturn checks a credential only when an
    # allocation is made, so the lifetime must cover the page rebuilding its peer connection
    # mid-call (network change, media restart) without rejoining: 4 h covers a double session
    # with overrun, and a credential copied out of a browser is useless by the evening.
    turn_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    turn_secret: SecretStr | None = None
    turn_ttl_s: int = Field(default=4 * 3600, ge=1, le=7 * 24 * 3600)
    stun_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # "relay": browsers use only TURN (clinics whose firewall allows nothing else).
    ice_transport_policy: Literal["all", "relay"] = "all"
    # The server's own peers: the server is publicly reachable, so by default it gathers host
    # candidates only and needs none of the browsers' TURN (JSON list like RAPPORT_ICE_SERVERS).
    server_ice_servers: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)
    # Local addresses the media engine gathers candidates on; empty = every interface except
    # loopback (aioice's default). Tests pin this to 127.0.0.1.
    media_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Accept loopback ICE candidates from browsers (only sensible for local development/tests).
    allow_loopback_candidates: bool = False
    # Private networks (RFC 1918, 100.64.0.0/10, fc00::/7) browsers' ICE candidates may be in;
    # default all of them, as on a LAN; "" allows none (a cloud host's internal services).
    allowed_candidate_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(_private_networks())
    )
    # "forward": relay encoded VP8/Opus frames as they are (no video decode/encode);
    # "transcode": decode and re-encode everything (the original relay, for comparison).
    relay_mode: Literal["forward", "transcode"] = "forward"
    # Media worker processes; each session's call is pinned to one. None: one per core.
    # 0 runs the media in the server process itself (one core at most; handy for debugging).
    media_workers: int | None = Field(default=None, ge=0, le=256)
    # --- spare media worker (issue 16): a started, idle worker that replaces a crashed one at
    # once. None: only when there is a single worker (with more, calls move to a running one).
    media_spare_worker: bool | None = None
    invite_ttl_hours: float = 24.0
    login_idle_minutes: float = 60.0
    # Sign-in attempts allowed (``limits`` notation); over either, the answer is 429.
    login_attempts_per_address: str = "20 per minute"
    login_attempts_per_account: str = "10 per 10 minutes"
    max_message_bytes: int = 64 * 1024
    # HTTP request bodies (the API takes small JSON documents); larger ones are answered 413.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_messages_per_second: float = 50.0
    # Seconds an in-call seat is held for a participant whose socket dropped without leaving.
    reconnect_grace_s: float = Field(default=60.0, ge=0, le=3600)
    # Socket opens per person and session: a burst, then this many a minute (a page that
    # reconnects in a tight loop is refused with 4429 and backs off).
    # Knocks (joins that enter the waiting room) from one network address: a burst, then
    # this many a minute; beyond it the knock is refused (a script cycling browser identities).
    knock_burst_per_address: int = Field(default=30, ge=1)
    knocks_per_minute_per_address: float = Field(default=30.0, gt=0)
    connect_burst: int = Field(default=20, ge=1)
    # How often the event loop's lag is sampled (/metrics rapport_loop_lag_seconds).
    loop_lag_interval_s: float = Field(default=0.25, ge=0.01, le=10)
    connects_per_minute: float = Field(default=20.0, gt=0)
    secure_cookies: bool | None = None  # None: secure when public_url is https
    web_dir: Path = REPO_ROOT / "web"
    log_level: str = "info"
    # /docs, /redoc and /openapi.json: off unless asked for (/docs loads a script from a CDN).
    api_docs: bool = False
    # Bearer token for /metrics (RAPPORT_METRICS_TOKEN); unset, /metrics answers loopback only.
    metrics_token: str | None = None
    # SIGTERM/SIGINT start a drain: live calls continue until they end or until this deadline
    # (3 h by default, so a deploy never cuts a therapy hour); a second signal exits at once.
    drain_timeout_s: float = Field(default=3 * 3600.0, ge=0)
    # A `live` session nobody has been in for this long (e.g. left behind by a crash) is ended.
    idle_end_after_s: float = Field(default=2 * 3600.0, gt=0)
    # Days an ended session's data is kept before `rapport purge --yes` erases it; unset keeps
    # everything (a practice's record-keeping duty decides, not the software).
    retention_days: int | None = Field(default=None, ge=1, le=36500)
    log_json: bool = True
    # --- alliance signals' thread (issue 10) ---
    # How often the signal thread wakes to run the 20 ms frames that fell due (all of them,
    # one by one, so the figures do not depend on it). Longer costs less CPU per session and
    # delays the speaking indicator by up to this much.
    signal_tick_ms: int = Field(default=100, ge=20, le=200)
    # Silero VAD's assist to the voice activity (docs/silero.md): quiet speech under noise
    # (a speaker who moved away, soft voices) counts; off falls back to webrtcvad alone.
    # Costs ~+0.009 CPU s/s per session (bench-signals: 0.024 with it, 0.015 without on a
    # machine where onnxruntime's version measured 0.035; budget 0.03); the weights are
    # loaded at start-up and a failure to load is fatal.
    silero_assist: bool = True
    # --- cluster (several nodes, issue 15) ---
    # Redis (redis://host:6379/0) shared by every node: set it to run several nodes behind one
    # address. Unset (the default) is single-node mode, with no Redis at all.
    redis_url: str | None = None
    # This node's name in the cluster (node list, metrics); the host name by default.
    node_id: str = Field(default_factory=lambda: socket.gethostname() or "rapport", min_length=1)
    # Heartbeat period; a node silent for node_ttl_s is taken for dead and its rooms move on
    # the next reconnect. A room's lease (renewed by its host every heartbeat) lasts lease_s.
    cluster_heartbeat_s: float = Field(default=1.0, gt=0, le=60)
    cluster_node_ttl_s: float = Field(default=5.0, gt=0, le=300)
    cluster_lease_s: float = Field(default=5.0, gt=0, le=300)
    # False: this node relays signalling but hosts no rooms (a signalling-only front node).
    cluster_hosts_rooms: bool = True
    # How long a node waits for the node hosting a room to answer a read of its live state
    # (the therapist's metrics, an admin's call detail) before using what is persisted.
    cluster_ask_timeout_s: float = Field(default=2.0, gt=0, le=30)

    @field_validator(
        "ice_servers",
        "media_addresses",
        "turn_urls",
        "stun_urls",
        "server_ice_servers",
        "allowed_candidate_networks",
        mode="before",
    )
    @classmethod
    def _parse_json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("allowed_candidate_networks", mode="after")
    @classmethod
    def _private_allow_list(cls, value: list[str]) -> list[str]:
        """Refuse a mistyped or non-private network at start, not in a media worker."""
        from media import check_allowed_networks

        return list(check_allowed_networks(value))

    @field_validator("ice_servers", "server_ice_servers", mode="after")
    @classmethod
    def _ice_servers_are_rtc_ice_servers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Refuse a malformed RAPPORT_ICE_SERVERS at start, not at the first join."""
        for server in value:
            IceServer.model_validate(server)
        return value

    @field_validator("login_attempts_per_address", "login_attempts_per_account")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        """Refuse a malformed limit at start, not at the first sign-in."""
        from limits import parse

        parse(value)
        return value

    @field_validator("turn_urls", mode="after")
    @classmethod
    def _turn_urls_are_turn(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"RAPPORT_TURN_URLS: {url!r} is not a turn: or turns: URL")
        return value

    @field_validator("stun_urls", mode="after")
    @classmethod
    def _stun_urls_are_stun(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("stun:", "stuns:")):
                raise ValueError(f"RAPPORT_STUN_URLS: {url!r} is not a stun: URL")
        return value

    @model_validator(mode="after")
    def _turn_is_complete(self) -> Settings:
        """Half a TURN configuration would start fine and fail every relayed call."""
        secret = self.turn_secret.get_secret_value() if self.turn_secret else ""
        if self.turn_urls and not secret:
            raise ValueError("RAPPORT_TURN_URLS is set but RAPPORT_TURN_SECRET is not")
        if secret and not self.turn_urls:
            raise ValueError("RAPPORT_TURN_SECRET is set but RAPPORT_TURN_URLS is not")
        if secret and len(secret) < 16:
            raise ValueError("RAPPORT_TURN_SECRET is too short: use 16 characters or more")
        if self.ice_transport_policy == "relay" and not self._has_turn():
            raise ValueError(
                "RAPPORT_ICE_TRANSPORT_POLICY=relay needs a TURN server "
                "(RAPPORT_TURN_URLS, or a turn: entry in RAPPORT_ICE_SERVERS)"
            )
        return self

    def _has_turn(self) -> bool:
        if self.turn_urls:
            return True
        for server in self.ice_servers:
            urls = server.get("urls")
            for url in [urls] if isinstance(urls, str) else urls or []:
                if str(url).startswith(("turn:", "turns:")):
                    return True
        return False

    @model_validator(mode="after")
    def _cluster_timing(self) -> Settings:
        """A heartbeat slower than the node TTL would make live nodes look dead."""
        if self.redis_url and self.cluster_heartbeat_s * 2 > min(
            self.cluster_node_ttl_s, self.cluster_lease_s
        ):
            raise ValueError(
                "RAPPORT_CLUSTER_HEARTBEAT_S must be at most half of RAPPORT_CLUSTER_NODE_TTL_S "
                "and RAPPORT_CLUSTER_LEASE_S"
            )
        return self

    @model_validator(mode="after")
    def _default_public_url(self) -> Settings:
        """Without RAPPORT_PUBLIC_URL, links point at the address actually served."""
        if "public_url" not in self.model_fields_set:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            self.public_url = f"http://{host}:{self.port}"
        return self

    @property
    def media_worker_count(self) -> int:
        if self.media_workers is not None:
            return self.media_workers
        return usable_cores()

    @cached_property
    def cookie_secure(self) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return self.public_url.startswith("https://")

    def public(self, path: str) -> str:
        return self.public_url.rstrip("/") + path

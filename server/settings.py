"""Runtime configuration, read once from ``RAPPORT_*`` environment variables.

A single settings object is passed around (not imported as a global) so tests can run several
servers with different settings in one process.
"""

from __future__ import annotations

import json
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from signaling.messages import IceServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_database_url() -> str:
    data_dir = Path.cwd() / "data"
    return f"sqlite+aiosqlite:///{data_dir / 'rapport.db'}"


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota.

    In a container started with ``--cpus=2`` on a 16-core host the affinity still lists 16
    CPUs; one media worker per listed CPU would then be 16 processes sharing two cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity is all we know
    return max(1, cores)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_", extra="ignore")

    database_url: str = Field(default_factory=default_database_url)
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    # JSON list of RTCIceServer dicts handed to browsers and to the server's peers. Empty means
    # host candidates only (fine on a LAN or localhost; use TURN across the internet).
    ice_servers: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)
    # Local addresses the media engine gathers candidates on; empty = every interface except
    # loopback (aioice's default). Tests pin this to 127.0.0.1.
    media_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Accept loopback ICE candidates from browsers (only sensible for local development/tests).
    allow_loopback_candidates: bool = False
    # "forward": relay encoded VP8/Opus frames as they are (no video decode/encode);
    # "transcode": decode and re-encode everything (the original relay, for comparison).
    relay_mode: Literal["forward", "transcode"] = "forward"
    # Media worker processes; each session's call is pinned to one. None: one per core.
    # 0 runs the media in the server process itself (one core at most; handy for debugging).
    media_workers: int | None = Field(default=None, ge=0, le=256)
    invite_ttl_hours: float = 24.0
    login_idle_minutes: float = 60.0
    max_message_bytes: int = 64 * 1024
    max_messages_per_second: float = 50.0
    # Seconds an in-call seat is held for a participant whose socket dropped without leaving.
    reconnect_grace_s: float = Field(default=60.0, ge=0, le=3600)
    secure_cookies: bool | None = None  # None: secure when public_url is https
    web_dir: Path = REPO_ROOT / "web"
    log_level: str = "info"
    log_json: bool = True

    @field_validator("ice_servers", "media_addresses", mode="before")
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

    @field_validator("ice_servers", mode="after")
    @classmethod
    def _ice_servers_are_rtc_ice_servers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Refuse a malformed RAPPORT_ICE_SERVERS at start, not at the first join."""
        for server in value:
            IceServer.model_validate(server)
        return value

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

"""Rapport's media layer, and the only names ``signaling`` and ``server`` may import from it.

``media.participants`` holds the vocabulary every layer shares (``Role``, ``MediaState``).
Four systems live below this package, each in its own subpackage:

- ``media.relay``: one aiortc peer per participant, the relay between them, SDP and ICE
  checks, and call-quality scoring;
- ``media.workers``: the worker processes that host calls, one per core, and their typed
  request/event protocol;
- ``media.alliance``: voice activity and the pure alliance-signal engine, the live feed that
  runs it on decoded audio, and offline analysis of recorded tracks;
- ``media.aiortc_compat``: every touch of aiortc's private internals. Its forwarding hooks
  are imported only by code that forwards; its speed patches are installed by an explicit
  call where media runs (an in-process ``Call``, a media worker), never on import.

``tests/test_code_quality.py`` enforces the boundary: ``signaling`` and ``server`` import
``from media import …`` names listed in ``__all__`` (plus ``media.loops``'s neutral helpers
through this module), never a submodule. The names resolve lazily so that importing
``media`` (or ``server.app``) loads no media code and patches nothing until it is used: a
server whose calls all run in worker processes never imports aiortc's internals at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_API: dict[str, str] = {
    # who takes part, and their media state
    "ROLES": "media.participants",
    "MediaState": "media.participants",
    "Role": "media.participants",
    "other_role": "media.participants",
    # the relay: what a room needs to host a call
    "AudioInput": "media.relay.call",
    "Call": "media.relay.call",
    "CallFactory": "media.relay.call",
    "CallHandle": "media.relay.call",
    "MediaUnavailable": "media.relay.call",
    "MediaConfig": "media.relay.ice",
    "PRIVATE_NETWORKS": "media.relay.ice",
    "check_allowed_networks": "media.relay.ice",
    "restrict_host_addresses": "media.relay.ice",
    "SdpError": "media.relay.sdp",
    # call quality (pure scoring of getStats samples)
    "DirectionSample": "media.relay.quality",
    "KindSample": "media.relay.quality",
    "Label": "media.relay.quality",
    "PeerStatsSampler": "media.relay.quality",
    "SmoothedScore": "media.relay.quality",
    "label_for": "media.relay.quality",
    "rtp_lost": "media.relay.quality",
    # worker processes
    "MediaWorkerPool": "media.workers.pool",
    # alliance signals
    "SignalConfig": "media.alliance.engine",
    "LiveSignals": "media.alliance.live",
    "SignalsUpdate": "media.alliance.live",
    "SignalThread": "media.alliance.live",
    "SnapshotPayload": "media.alliance.payload",
    "TimelineSecond": "media.alliance.engine",
    "snapshot_from_json": "media.alliance.payload",
    "snapshot_json": "media.alliance.payload",
    "analyze_files": "media.alliance.offline",
    "SileroUnavailable": "media.alliance.silero",
    "VadTuning": "media.alliance.vad",
    "voice_tuning": "media.alliance.vad",
    # event-loop health, shared by the server and every worker
    "LoopLagSampler": "media.loops",
}

__all__ = [
    "PRIVATE_NETWORKS",
    "ROLES",
    "AudioInput",
    "Call",
    "CallFactory",
    "CallHandle",
    "DirectionSample",
    "KindSample",
    "Label",
    "LiveSignals",
    "LoopLagSampler",
    "MediaConfig",
    "MediaState",
    "MediaUnavailable",
    "MediaWorkerPool",
    "PeerStatsSampler",
    "Role",
    "SdpError",
    "SignalConfig",
    "SignalThread",
    "SignalsUpdate",
    "SileroUnavailable",
    "SmoothedScore",
    "SnapshotPayload",
    "TimelineSecond",
    "VadTuning",
    "analyze_files",
    "check_allowed_networks",
    "label_for",
    "other_role",
    "restrict_host_addresses",
    "rtp_lost",
    "snapshot_from_json",
    "snapshot_json",
    "voice_tuning",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'media' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from media.alliance.engine import SignalConfig, TimelineSecond
    from media.alliance.live import LiveSignals, SignalsUpdate, SignalThread
    from media.alliance.offline import analyze_files
    from media.alliance.payload import SnapshotPayload, snapshot_from_json, snapshot_json
    from media.alliance.silero import SileroUnavailable
    from media.alliance.vad import VadTuning, voice_tuning
    from media.loops import LoopLagSampler
    from media.participants import ROLES, MediaState, Role, other_role
    from media.relay.call import AudioInput, Call, CallFactory, CallHandle, MediaUnavailable
    from media.relay.ice import (
        PRIVATE_NETWORKS,
        MediaConfig,
        check_allowed_networks,
        restrict_host_addresses,
    )
    from media.relay.quality import (
        DirectionSample,
        KindSample,
        Label,
        PeerStatsSampler,
        SmoothedScore,
        label_for,
        rtp_lost,
    )
    from media.relay.sdp import SdpError
    from media.workers.pool import MediaWorkerPool

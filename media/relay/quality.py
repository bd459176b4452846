"""Call quality: stats sampled from a peer connection and a 0–100 score per direction.

The scorer is in the spirit of LiveKit's and Jitsi's: packet loss dominates, with thresholds
per media kind (people tolerate less loss in audio concealment than in video); round-trip
time, jitter, video freezes and a starved video bitrate subtract further. Penalties are
chosen so that the labels line up with the loss thresholds:

* loss ≤ good threshold (audio 2.5 %, video 2 %): no loss penalty → can be *excellent*
* good < loss ≤ poor threshold (audio 7.5 %, video 6 %): 16–40 points → *good* at best
* loss > poor threshold: 41–90 points → *poor*

``score = 100 − max(audio penalty, video penalty)``, each kind's penalty the sum of its loss,
RTT, jitter, freeze and bitrate penalties (capped at 100). Labels: excellent ≥ 85, good ≥ 60,
poor < 60, and *lost* (score 0) when no RTP arrived for ``RTP_LOST_AFTER_S`` (the peer's
report carries the time since the last packet each way, so a sample says so at once).
Scores are smoothed with an exponential average that falls fast and recovers slowly, so a
single bad sample shows but a good one does not hide a bad trend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# "no_media": in the call, but media never connected (the room decides; never "excellent").
Label = Literal["excellent", "good", "poor", "lost", "no_media"]
Kind = Literal["audio", "video"]

LOSS_THRESHOLDS: dict[str, tuple[float, float]] = {"audio": (0.025, 0.075), "video": (0.02, 0.06)}
CLOCK_RATE = {"audio": 48_000, "video": 90_000}
VIDEO_TARGET_BPS = 300_000
# media.relay.peer.STALL_AFTER_S (kept equal by a test; not imported, this module stays pure),
# so the room's "lost" and the quality label's agree.
RTP_LOST_AFTER_S = 1.5


def rtp_lost(
    rtp_age_s: Mapping[str, float | None], source_age_s: float | None = None
) -> tuple[bool, bool]:
    """Whether the up and the down direction are lost, from the seconds since the last RTP
    packet each way.

    ``up`` (from the participant) is lost when it stopped. ``down`` (to them) only counts
    when the server had media to send (``source_age_s``: the other participant's ``up``):
    with nobody else in the call, or the other person gone quiet on the wire, nothing goes
    down and that is not this participant's connection failing.
    """

    def stale(age: float | None) -> bool:
        return age is not None and age >= RTP_LOST_AFTER_S

    up = stale(rtp_age_s.get("up"))
    down = stale(rtp_age_s.get("down")) and source_age_s is not None and not stale(source_age_s)
    return up, down


def loss_penalty(kind: str, loss: float) -> float:
    good, poor = LOSS_THRESHOLDS[kind]
    if loss <= good:
        return 0.0
    if loss <= poor:
        return 16.0 + 24.0 * (loss - good) / (poor - good)
    return 41.0 + 49.0 * min(1.0, (loss - poor) / (3 * poor))


def rtt_penalty(rtt_ms: float | None) -> float:
    if rtt_ms is None or rtt_ms <= 200:
        return 0.0
    if rtt_ms <= 400:
        return 15.0 * (rtt_ms - 200) / 200
    return 15.0 + 15.0 * min(1.0, (rtt_ms - 400) / 600)


def jitter_penalty(kind: str, jitter_ms: float | None) -> float:
    if jitter_ms is None or kind != "audio" or jitter_ms <= 30:
        return 0.0
    return 10.0 * min(1.0, (jitter_ms - 30) / 70)


def freeze_penalty(freezes: int) -> float:
    return min(24.0, 8.0 * max(0, freezes))


def bitrate_penalty(bitrate_bps: float | None, target_bps: float = VIDEO_TARGET_BPS) -> float:
    if bitrate_bps is None:
        return 0.0
    ratio = bitrate_bps / target_bps
    return 0.0 if ratio >= 0.5 else 15.0 * (0.5 - ratio) / 0.5


@dataclass(frozen=True)
class KindSample:
    """One media kind in one direction over one sampling interval."""

    loss: float = 0.0
    jitter_ms: float | None = None
    bitrate_bps: float | None = None
    freezes: int = 0
    packets: int = 0


@dataclass(frozen=True)
class DirectionSample:
    """One direction (``up``: participant → server, ``down``: server → participant)."""

    rtt_ms: float | None = None
    kinds: Mapping[str, KindSample] = field(default_factory=dict)
    bitrate_bps: float | None = None
    packets_per_s: float | None = None
    fps: float | None = None
    lost: bool = False


def raw_score(sample: DirectionSample) -> float:
    if sample.lost:
        return 0.0
    worst = 0.0
    for kind, ks in sample.kinds.items():
        penalty = loss_penalty(kind, ks.loss) + rtt_penalty(sample.rtt_ms)
        penalty += jitter_penalty(kind, ks.jitter_ms)
        if kind == "video":
            penalty += freeze_penalty(ks.freezes) + bitrate_penalty(ks.bitrate_bps)
        worst = max(worst, min(100.0, penalty))
    return 100.0 - worst


def label_for(score: float, lost: bool = False) -> Label:
    if lost:
        return "lost"
    if score >= 85:
        return "excellent"
    if score >= 60:
        return "good"
    return "poor"


@dataclass
class SmoothedScore:
    """Falls fast (α 0.7), recovers slowly (α 0.3)."""

    value: float | None = None
    lost: bool = False

    def update(self, sample: DirectionSample) -> tuple[float, Label]:
        score = raw_score(sample)
        self.lost = sample.lost
        if self.value is None or sample.lost:
            self.value = score
        else:
            alpha = 0.7 if score < self.value else 0.3
            self.value += alpha * (score - self.value)
        return round(self.value, 1), label_for(self.value, sample.lost)


@dataclass
class _Counters:
    received: int = 0
    lost: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    out_packets: dict[str, int] = field(default_factory=dict)
    out_lost: dict[str, int] = field(default_factory=dict)
    in_received: dict[str, int] = field(default_factory=dict)
    in_lost: dict[str, int] = field(default_factory=dict)


class PeerStatsSampler:
    """Turns successive aiortc ``getStats()`` reports into per-interval samples."""

    def __init__(self) -> None:
        self._prev: _Counters | None = None
        self._prev_t: float | None = None

    def sample(
        self,
        report: Mapping[str, Any],
        now: float,
        lost: bool = False,
        *,
        down_lost: bool | None = None,
    ) -> tuple[DirectionSample, DirectionSample]:
        """``lost`` marks the up direction (and the down one unless ``down_lost`` says)."""
        counters = _Counters()
        rtts: list[float] = []
        up_jitter: dict[str, float] = {}
        down: dict[str, dict[str, float]] = {}
        for stat in report.values():
            kind: str = getattr(stat, "kind", "") or ""
            match getattr(stat, "type", ""):
                # A kind may have two streams (the camera and a shared screen): sum their
                # counters, keep the worse loss fraction and jitter.
                case "inbound-rtp":
                    counters.in_received[kind] = (
                        counters.in_received.get(kind, 0) + stat.packetsReceived
                    )
                    counters.in_lost[kind] = counters.in_lost.get(kind, 0) + max(
                        0, stat.packetsLost
                    )
                    jitter = stat.jitter / CLOCK_RATE[kind] * 1000
                    up_jitter[kind] = max(jitter, up_jitter.get(kind, 0.0))
                case "remote-inbound-rtp":
                    counters.out_packets[kind] = (
                        counters.out_packets.get(kind, 0) + stat.packetsReceived
                    )
                    counters.out_lost[kind] = counters.out_lost.get(kind, 0) + max(
                        0, stat.packetsLost
                    )
                    seen = down.get(kind, {"fraction": 0.0, "jitter": 0.0})
                    down[kind] = {
                        "fraction": max(seen["fraction"], stat.fractionLost / 256),
                        "jitter": max(seen["jitter"], stat.jitter / CLOCK_RATE[kind] * 1000),
                    }
                    if stat.roundTripTime is not None:
                        rtts.append(stat.roundTripTime * 1000)
                case "transport":
                    counters.bytes_in += stat.bytesReceived
                    counters.bytes_out += stat.bytesSent
                    counters.packets_in += stat.packetsReceived
        rtt = sum(rtts) / len(rtts) if rtts else None
        prev, dt = self._prev, (now - self._prev_t) if self._prev_t is not None else 0.0
        self._prev, self._prev_t = counters, now
        up_kinds: dict[str, KindSample] = {}
        down_kinds: dict[str, KindSample] = {}
        for kind in ("audio", "video"):
            if kind in counters.in_received:
                received = counters.in_received[kind] - (
                    prev.in_received.get(kind, 0) if prev else 0
                )
                lost_n = counters.in_lost[kind] - (prev.in_lost.get(kind, 0) if prev else 0)
                total = max(0, received) + max(0, lost_n)
                up_kinds[kind] = KindSample(
                    loss=max(0, lost_n) / total if total else 0.0,
                    jitter_ms=up_jitter.get(kind),
                    packets=max(0, received),
                )
            if kind in down:
                down_kinds[kind] = KindSample(
                    loss=down[kind]["fraction"], jitter_ms=down[kind]["jitter"]
                )
        bitrate_in = bitrate_out = pps = None
        if prev is not None and dt > 0:
            bitrate_in = (counters.bytes_in - prev.bytes_in) * 8 / dt
            bitrate_out = (counters.bytes_out - prev.bytes_out) * 8 / dt
            pps = (counters.packets_in - prev.packets_in) / dt
        up = DirectionSample(
            rtt_ms=rtt, kinds=up_kinds, bitrate_bps=bitrate_in, packets_per_s=pps, lost=lost
        )
        down_sample = DirectionSample(
            rtt_ms=rtt,
            kinds=down_kinds,
            bitrate_bps=bitrate_out,
            lost=lost if down_lost is None else down_lost,
        )
        return up, down_sample

"""The server's side of one browser's peer connection.

Each participant gets one ``RTCPeerConnection``. What it receives either arrives as encoded
frames (forwarding: ``media.aiortc_compat.forwarding`` takes them out of aiortc before its
decoder) or as decoded frames from aiortc's own decode path (transcoding). Either way every
received track is read continuously (an unread aiortc track grows memory by about 1 MB/s).
What it sends comes from three ``OutboundTrack``\\ s (audio, camera, shared screen) that the
call feeds with the other participant's media.

In forwarding mode the answer negotiates VP8 and Opus only (``setCodecPreferences``) when the
browser offers them, so that both legs of a call share a codec and frames can pass through;
a browser without VP8 gets its own codec and the call transcodes for it.

The forwarding hooks live in ``media.aiortc_compat``, the one package that touches aiortc's
private internals, and are imported here only when this peer forwards: a transcoding peer is
stock aiortc behind its public API, so it keeps working on an aiortc the hooks do not fit.
The one exception, on every peer, is ``media.aiortc_compat.prflx``, which holds the sources of
incoming connectivity checks to the candidate filter's rule; on an aiortc it does not fit it
installs nothing and the peer runs on aioice's own behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.frame import Frame

from ..participants import MediaState
from . import ice
from .frames import FORWARDABLE, EncodedFrame
from .ice import MediaConfig, address_allowed, withhold_end_of_candidates
from .sdp import SdpError, sanitize_offer
from .tracks import AudioTap, OutboundTrack

if TYPE_CHECKING:
    from media.aiortc_compat.forwarding import ForwardingReceiver
    from media.aiortc_compat.prflx import PrflxGuard

log = logging.getLogger("rapport.media")

FrameSink = Callable[[str, Frame], None]
EncodedSink = Callable[[str, EncodedFrame], None]
# No RTP for this long on a connected peer is "lost": audio alone is 50 packets a second
# (muted tracks still send), so 1.5 s is a dead link, and the watchdog's 0.5 s tick puts the
# room's "lost" within 2 s of the last packet (it used to take 3 s plus the tick).
STALL_AFTER_S = 1.5
KINDS = ("audio", "video")
# What a peer negotiates, one transceiver each, in the order of the offer's media sections: the
# first audio section, the first video section (the camera), and a second video section for a
# shared screen (web/js/screen.js). Every offer carries the screen's section, with no track
# until the person shares, so starting or stopping a share is a replaceTrack in the browser
# and needs no renegotiation (the server only ever answers offers).
SLOTS = ("audio", "video", "screen")
SLOT_KIND = {"audio": "audio", "video": "video", "screen": "video"}
# What the relay forwards, per kind, when the browser offers it.
PREFERRED = {"video": "video/vp8", "audio": "audio/opus"}

_peer_ids = itertools.count(1)


def offered_codecs(sdp: str) -> list[tuple[str, set[str]]]:
    """(kind, {mime types}) for each media section of an offer, in order."""
    sections: list[tuple[str, set[str]]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append((line[2:].split(" ", 1)[0], set()))
        elif line.startswith("a=rtpmap:") and sections:
            parts = line.split(None, 1)
            if len(parts) == 2:
                kind, mimes = sections[-1]
                mimes.add(f"{kind}/{parts[1].split('/')[0]}".lower())
    return sections


def answered_codecs(sdp: str) -> dict[str, str | None]:
    """{mid: mime type} of the codec each media section of an answer sends with.

    aiortc lists a transceiver's negotiated codecs in the m= line in its own order, so the
    first payload type that is not RTX is the codec it sends and expects. Reading it from the
    answer instead of the transceiver's private codec list keeps the transcoding path off
    aiortc's internals.
    """
    found: dict[str, str | None] = {}
    sections: list[tuple[str, list[str], dict[str, str], str | None]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            fields = line[2:].split()
            sections.append((fields[0], fields[3:], {}, None))
        elif not sections:
            continue
        elif line.startswith("a=rtpmap:"):
            parts = line[len("a=rtpmap:") :].split(None, 1)
            if len(parts) == 2:
                sections[-1][2][parts[0]] = parts[1].split("/")[0]
        elif line.startswith("a=mid:"):
            kind, fmt, names, _ = sections[-1]
            sections[-1] = (kind, fmt, names, line[len("a=mid:") :].strip())
    for kind, fmt, names, mid in sections:
        if mid is None:
            continue
        name = next((names[pt] for pt in fmt if names.get(pt, "rtx").lower() != "rtx"), None)
        found[mid] = f"{kind}/{name}".lower() if name is not None else None
    return found


def prefer_codec(transceiver: RTCRtpTransceiver, mime: str) -> bool:
    """Answer with ``mime`` (plus RTX for video) only; False when we do not support it."""
    capabilities = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in capabilities if c.mimeType.lower() == mime]
    if not chosen:
        return False
    if transceiver.kind == "video":
        chosen += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    transceiver.setCodecPreferences(chosen)
    return True


class ParticipantPeer:
    def __init__(
        self,
        label: str,
        config: MediaConfig,
        on_frame: FrameSink,
        on_state: Callable[[], None] | None = None,
        *,
        on_encoded: EncodedSink | None = None,
        on_tap_audio: Callable[[AudioFrame], None] | None = None,
        on_keyframe_request: Callable[[str], None] | None = None,
        on_remb: Callable[[int], None] | None = None,
    ) -> None:
        self.label = label
        self.id = next(_peer_ids)
        self.pc = RTCPeerConnection(configuration=config.rtc_configuration())
        self._config = config
        self._forward = config.relay_mode == "forward"
        self._on_frame = on_frame
        self._on_state = on_state or (lambda: None)
        self._on_encoded = on_encoded or (lambda kind, frame: None)
        self._on_tap_audio = on_tap_audio
        self._on_keyframe_request = on_keyframe_request or (lambda kind: None)
        self._on_remb = on_remb
        self.outbound = {
            "audio": OutboundTrack("audio"),
            "video": OutboundTrack(
                "video", on_keyframe_needed=lambda: self._on_keyframe_request("video")
            ),
            "screen": OutboundTrack(
                "video", on_keyframe_needed=lambda: self._on_keyframe_request("screen")
            ),
        }
        self._transceivers: dict[str, RTCRtpTransceiver] = {}
        self.forwarders: dict[str, ForwardingReceiver] = {}
        self.codecs: dict[str, str | None] = {}
        self.tap: AudioTap | None = None
        self._readers: list[asyncio.Task[None]] = []
        self.last_frame_at: dict[str, float] = {}
        self.frames_in: dict[str, int] = {slot: 0 for slot in SLOTS}
        self.closed = False
        self._stalled = False
        self._end_of_candidates: asyncio.Task[None] | None = None
        self.prflx: PrflxGuard | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def media_state(self) -> MediaState:
        state = self.pc.connectionState
        if self.closed or state in ("closed", "failed"):
            return "lost" if self.frames_in["audio"] or self.frames_in["video"] else "none"
        if state != "connected":
            return "connecting"
        return "lost" if self._stalled else "connected"

    async def answer(self, offer_sdp: str) -> str:
        """Apply a browser offer and return the answer; raise ``SdpError`` if unusable."""
        cleaned, browser_ended = withhold_end_of_candidates(sanitize_offer(offer_sdp, self._config))
        try:
            # One transceiver per slot, created before the offer is applied so that its codec
            # preferences shape the answer (aiortc fixes the codecs in setRemoteDescription),
            # and in the offer's order, which is how aiortc pairs them with its sections.
            transceivers = self._transceivers
            for kind, mimes in offered_codecs(cleaned):
                free = [s for s in SLOTS if SLOT_KIND[s] == kind and s not in transceivers]
                slot = free[0] if free else None
                if slot is None:
                    continue
                transceiver = self.pc.addTransceiver(self.outbound[slot], direction="sendrecv")
                transceivers[slot] = transceiver
                if self._forward and PREFERRED[kind] in mimes:
                    prefer_codec(transceiver, PREFERRED[kind])
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=cleaned, type="offer"))
            self._bundle_screen()
            self._guard_peer_reflexive()
            answer = await self.pc.createAnswer()
            answered = answered_codecs(answer.sdp)
            for slot, transceiver in transceivers.items():
                mid = transceiver.mid
                self.codecs[slot] = answered.get(mid) if mid is not None else None
                self._install(slot, transceiver)
            # The hooks are in before the senders start, which setLocalDescription does.
            await self.pc.setLocalDescription(answer)
        except SdpError:
            raise
        except Exception as exc:  # aiortc signals bad SDP with many exception types
            log.info("offer rejected by aiortc: %s", type(exc).__name__)
            raise SdpError("The offer could not be negotiated.") from exc
        if self.pc.localDescription is None:
            raise SdpError("The offer could not be negotiated.")
        if browser_ended:
            self._end_of_candidates = asyncio.ensure_future(self._end_candidates_later())
        return self.pc.localDescription.sdp

    def _bundle_screen(self) -> None:
        """Put the screen's section on the camera's transport, as the browser's BUNDLE says.

        aiortc's default bundle policy ("balanced") gives a second video transceiver the first
        one's transport at creation and marks it bundled, so when the offer's BUNDLE moves the
        camera onto the primary transport the screen stays on the discarded one and never
        connects. Both are in the same BUNDLE group (browsers bundle every section), so the
        screen belongs where the camera went. Only the transports' public setters are used;
        "max-bundle" would avoid this, but aiortc then takes the candidates of the last section
        only, which a browser may leave empty.
        """
        camera, screen = self._transceivers.get("video"), self._transceivers.get("screen")
        if camera is None or screen is None:
            return
        transport = camera.receiver.transport
        if screen.receiver.transport is not transport:
            screen.receiver.setTransport(transport)
            screen.sender.setTransport(transport)

    def _guard_peer_reflexive(self) -> None:
        """Judge the sources of incoming checks by the candidate filter's rule, before any can
        arrive (ICE starts with setLocalDescription). Loaded here only: importing the server
        must leave aiortc's internals alone (tests/test_aiortc_compat.py)."""
        from media.aiortc_compat.prflx import guard_peer_reflexive

        config = self._config
        self.prflx = guard_peer_reflexive(self.pc, lambda address: address_allowed(address, config))

    async def _end_candidates_later(self) -> None:
        """Pass the browser's end-of-candidates on once its checks had time to arrive.

        Until then aiortc waits for peer-reflexive candidates instead of failing at once
        (media/relay/ice.py says why); after it, a browser that never reached us fails ICE
        as it did before, rather than staying "connecting".
        """
        wait_s = ice.PRFLX_WAIT_S  # read when used, so a test can shorten it
        await asyncio.sleep(wait_s)
        if self.closed or self.pc.iceConnectionState in ("completed", "closed"):
            return
        log.info(
            "peer %s: not connected in %.0f s, passing end-of-candidates on", self.label, wait_s
        )
        try:
            await self.pc.addIceCandidate(None)
        except Exception:  # a peer closing meanwhile; ICE state says the rest
            log.exception("peer %s: end-of-candidates failed", self.label)

    def _install(self, slot: str, transceiver: RTCRtpTransceiver) -> None:
        """Hook forwarding into the transceiver when the relay forwards and the codec allows."""
        if not self._forward:
            return  # the transcoding relay is stock aiortc
        # Only here, in forwarding: raises ForwardingUnavailable on an aiortc it does not fit.
        from media.aiortc_compat.forwarding import (
            ForwardingReceiver,
            send_forwarded,
            watch_sender,
        )

        watch_sender(
            transceiver.sender,
            on_keyframe_request=lambda: self._on_keyframe_request(slot),
            on_remb=self._on_remb if SLOT_KIND[slot] == "video" else None,
        )
        # Forwarded frames leave as the RTP payloads they arrived in (decoded ones, when
        # this direction transcodes, still go through aiortc's encoder).
        send_forwarded(transceiver.sender, transceiver)
        self.outbound[slot].send_payloads = True
        if self.codecs.get(slot) not in FORWARDABLE:
            log.info("peer %s %s codec %s is decoded", self.label, slot, self.codecs.get(slot))
            return
        forwarder = ForwardingReceiver(
            transceiver, on_frame=lambda frame: self._on_encoded_frame(slot, frame)
        )
        forwarder.enable()
        self.forwarders[slot] = forwarder
        if slot == "audio" and self._on_tap_audio is not None:
            self.tap = AudioTap(self._on_tap_audio)

    # ----------------------------------------------------------------- relay controls
    def codec(self, kind: str) -> str | None:
        """Negotiated mime type for ``kind`` (the same both ways), None if not negotiated."""
        return self.codecs.get(kind)

    def forwarding(self, kind: str) -> bool:
        forwarder = self.forwarders.get(kind)
        return forwarder is not None and forwarder.enabled

    def set_forwarding(self, kind: str, enabled: bool) -> None:
        """Hand over this peer's received ``kind`` encoded (True) or decoded (False)."""
        forwarder = self.forwarders.get(kind)
        if forwarder is None:
            return
        if enabled:
            forwarder.enable()
        else:
            forwarder.disable()

    def request_keyframe(self, reason: str = "", slot: str = "video") -> None:
        forwarder = self.forwarders.get(slot)
        if forwarder is not None and forwarder.enabled:
            forwarder.request_keyframe(reason)

    def set_downstream_bitrate(self, bps: int | None) -> None:
        """The viewer's estimate caps each video stream this peer sends (camera and screen)."""
        for slot in ("video", "screen"):
            forwarder = self.forwarders.get(slot)
            if forwarder is not None:
                forwarder.set_downstream_bitrate(bps)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "codecs": dict(self.codecs),
            "frames_in": dict(self.frames_in),
            "outbound": {
                kind: {
                    "sent": t.sent,
                    "dropped": t.dropped,
                    "gated": t.gated,
                    "forwarded": t.sent_packets,
                    "encoded": t.sent_frames,
                }
                for kind, t in self.outbound.items()
            },
        }
        for kind, fw in self.forwarders.items():
            out[f"{kind}_forwarder"] = {
                "enabled": fw.enabled,
                "frames": fw.assembler.frames,
                "keyframes": fw.assembler.keyframes,
                "skipped": fw.assembler.frames_skipped,
                "late_packets": fw.assembler.packets_late,
                "plis_sent": fw.plis_sent,
            }
        if self.tap is not None:
            out["audio_tap"] = self.tap.stats()
        if self.prflx is not None:
            out["prflx_checks_dropped"] = self.prflx.dropped
        return out

    # ----------------------------------------------------------------- receiving
    def check_stall(self, now: float | None = None) -> bool:
        """Mark media lost when no RTP arrived for ``STALL_AFTER_S`` on a connected peer; return
        whether that changed.

        aiortc keeps a dead peer 'connected' for ~30 s, so silence on the wire is the signal.
        """
        if self.closed or self.pc.connectionState != "connected":
            return False
        now = time.monotonic() if now is None else now
        newest = max(self.last_frame_at.values(), default=None)
        stalled = newest is not None and now - newest >= STALL_AFTER_S
        if stalled != self._stalled:
            self._stalled = stalled
            return True
        return False

    def _arrived(self, kind: str, at: float) -> None:
        self.frames_in[kind] += 1
        self.last_frame_at[kind] = at
        if self._stalled:
            self._stalled = False
            self._on_state()

    def _on_encoded_frame(self, kind: str, frame: EncodedFrame) -> None:
        if self.closed:
            return
        self._arrived(kind, frame.arrival)
        if kind == "audio" and self.tap is not None:
            self.tap.push(frame)
        try:
            self._on_encoded(kind, frame)
        except Exception:
            log.exception("encoded frame sink failed")

    def _on_track(self, track: MediaStreamTrack) -> None:
        # aiortc names the track's kind, not its section: the camera and the shared screen are
        # both "video", told apart by the transceiver that received them.
        slot = next((s for s, t in self._transceivers.items() if t.receiver.track is track), None)
        self._readers.append(asyncio.ensure_future(self._read(track, slot)))

    async def _read(self, track: MediaStreamTrack, slot: str | None) -> None:
        """Read aiortc's decoded frames (transcoding); when forwarding this just waits.

        A section beyond the known slots (``slot`` None) is read and dropped: unread, it leaks.
        """
        kind = slot
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a decoder hiccup must not stop the reader: unread tracks leak
                log.exception("reading %s track failed", kind)
                continue
            if not isinstance(frame, Frame) or kind is None:
                continue
            self._arrived(kind, time.monotonic())
            try:
                self._on_frame(kind, frame)
            except Exception:
                log.exception("frame sink failed")

    async def _on_connection_state(self) -> None:
        log.info("peer %s connection %s", self.label, self.pc.connectionState)
        self._on_state()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._end_of_candidates is not None:
            self._end_of_candidates.cancel()
        for track in self.outbound.values():
            track.stop()
        for forwarder in self.forwarders.values():
            forwarder.close()
        if self.tap is not None:
            self.tap.close()
        for task in self._readers:
            task.cancel()
        # aiortc's close can itself raise after a failed negotiation; the peer is gone either way.
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in self._readers:
            with contextlib.suppress(BaseException):
                await task
        self._on_state()

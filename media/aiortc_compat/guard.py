"""The guard in front of the forwarding hooks: is this aiortc the one they were written for?

The hooks replace private attributes of aiortc 1.16.0 (name-mangled ones included) that aiortc
may rename or rework in any release without notice. An aiortc that changed underneath them
would not crash: it would silently decode again, or silently send nothing. So before any hook
is installed, ``check_internals()`` reads the exact source lines the hooks rely on and
``require()`` turns any mismatch into a ``ForwardingUnavailable`` naming what changed.
``media.aiortc_compat.forwarding`` calls ``require()`` when it is imported, and it is
imported only by code that forwards, so a mismatch stops forwarding loudly while a
transcoding relay (stock aiortc, public API) keeps working.
"""

from __future__ import annotations

import inspect

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterBuffer

from .pin import AIORTC_VERSION, missing, source, version_problems
from .prflx import check_prflx
from .speed import check_speed


class ForwardingUnavailable(ImportError):
    """aiortc is not the version whose internals the forwarding hooks were written against.

    An ``ImportError`` because it is raised while ``media.aiortc_compat.forwarding`` is being
    imported, as it always was: code that treats "cannot import the forwarder" as one case
    keeps working.
    """


def _hook_problems() -> list[str]:
    """The receiver, sender and transceiver internals ``forwarding`` patches or reads."""
    problems: list[str] = []
    init = source(RTCRtpReceiver.__init__)
    handle = source(RTCRtpReceiver._handle_rtp_packet)
    problems += missing(
        "RTCRtpReceiver",
        ("self.__jitter_buffer = JitterBuffer(", init),
        ("pli_flag, encoded_frame = self.__jitter_buffer.add(packet)", handle),
        ("packet._data = depayload(codec, packet.payload)", handle),
        ("if encoded_frame is not None and self.__decoder_thread:", handle),
        ("self.__remote_bitrate_estimator = RemoteBitrateEstimator()", init),
        ("remb = self.__remote_bitrate_estimator.add(", handle),
        ("if self.__rtcp_ssrc is not None and remb is not None:", handle),
        ("unwrap_rtx(packet", handle),
    )
    for cls, name in (
        (RTCRtpReceiver, "_send_rtcp"),
        (RTCRtpReceiver, "_send_rtcp_pli"),
        (RTCRtpReceiver, "_handle_rtp_packet"),
        (RTCRtpSender, "_handle_rtcp_packet"),
    ):
        if not inspect.iscoroutinefunction(getattr(cls, name, None)):
            problems.append(f"{cls.__name__}.{name} is missing or no longer a coroutine")
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        problems.append("RTCRtpSender._send_keyframe is missing")
    sender_rtcp = source(getattr(RTCRtpSender, "_handle_rtcp_packet", None))
    if "self._send_keyframe()" not in sender_rtcp:
        problems.append("RTCRtpSender no longer calls _send_keyframe() on PLI/FIR")
    next_frame = source(getattr(RTCRtpSender, "_next_encoded_frame", None))
    if "self.__encoder.pack(data)" not in next_frame:
        problems.append("RTCRtpSender no longer packs pre-encoded av.Packets")
    if "_set_rtcp_ssrc" not in dir(RTCRtpReceiver):
        problems.append("RTCRtpReceiver._set_rtcp_ssrc is missing")
    if "self._codecs" not in source(RTCRtpTransceiver.__init__):
        problems.append("RTCRtpTransceiver._codecs is missing")
    jb = JitterBuffer(capacity=16, prefetch=4)
    if not all(hasattr(jb, a) for a in ("_capacity", "_prefetch", "_is_video", "add")):
        problems.append("JitterBuffer attributes changed")
    # The sender's encoder slot, which send_forwarded() fills with a _ForwardingEncoder.
    problems += missing(
        "RTCRtpSender",
        ("self.__encoder: Optional[Encoder] = None", source(RTCRtpSender.__init__)),
        ("if self.__encoder is None:", next_frame),
        ("self.__encoder.encode, data, force_keyframe", next_frame),
        ('hasattr(self.__encoder, "target_bitrate")', sender_rtcp),
        (
            "for i, payload in enumerate(enc_frame.payloads):",
            source(getattr(RTCRtpSender, "_run_rtp", None)),
        ),
        (
            "timestamp = uint32_add(timestamp_origin, enc_frame.timestamp)",
            source(getattr(RTCRtpSender, "_run_rtp", None)),
        ),
    )
    return problems


def check_internals() -> list[str]:
    """Return what no longer matches the aiortc internals this package relies on.

    Covers the version pin, every private name the forwarding hooks touch, the functions the
    speed patches replace (forwarding feeds aiortc's estimator through them) and the ICE
    internals the peer-reflexive guard wraps.
    """
    return version_problems() + _hook_problems() + check_speed() + check_prflx()


def require() -> None:
    """Raise ``ForwardingUnavailable`` unless every check passes."""
    problems = check_internals()
    if problems:
        raise ForwardingUnavailable(
            "Rapport's forwarding relay cannot run on this aiortc "
            "(set RAPPORT_RELAY_MODE=transcode to run without it): " + "; ".join(problems)
        )


__all__ = ["AIORTC_VERSION", "ForwardingUnavailable", "check_internals", "require"]

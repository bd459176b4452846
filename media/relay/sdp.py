"""Checks on browser SDP before aiortc parses it.

aiortc raises a zoo of exception types on malformed SDP. Cheap structural checks here give the
sender a precise reason for the common mistakes; anything that still fails inside aiortc is
caught by the peer and reported as ``bad_sdp`` too.
"""

from __future__ import annotations

import re

from .ice import MediaConfig, candidate_allowed


class SdpError(ValueError):
    """The offer cannot be used; ``str(err)`` is safe to show to the sender."""


_LINE = re.compile(r"^[a-z]=.*$")
_ALLOWED_MEDIA = {"audio", "video"}
MAX_MEDIA_SECTIONS = 4


def sanitize_offer(sdp: str, config: MediaConfig) -> str:
    """Validate an offer's structure and drop unsafe ICE candidates; return the cleaned SDP."""
    if "\x00" in sdp:
        raise SdpError("The offer contains a NUL byte.")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line != ""]
    if not lines or lines[0] != "v=0":
        raise SdpError("The offer must start with 'v=0'.")
    media_kinds: list[str] = []
    out: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not _LINE.match(line):
            raise SdpError(f"Line {number} is not of the form 'x=value'.")
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 4 or not fields[1].isdigit():
                raise SdpError(f"Line {number}: malformed media line.")
            media_kinds.append(fields[0])
        if line.startswith("a=candidate:") and not candidate_allowed(line[2:], config):
            continue
        out.append(line)
    if not media_kinds:
        raise SdpError("The offer has no media sections.")
    if len(media_kinds) > MAX_MEDIA_SECTIONS:
        raise SdpError("The offer has too many media sections.")
    unknown = sorted(set(media_kinds) - _ALLOWED_MEDIA)
    if unknown:
        raise SdpError(f"Unsupported media kind(s): {', '.join(unknown)}.")
    text = "\n".join(out)
    for needed, why in (
        ("a=ice-ufrag:", "ICE credentials"),
        ("a=fingerprint:", "a DTLS fingerprint"),
    ):
        if needed not in text:
            raise SdpError(f"The offer lacks {why}.")
    return "\r\n".join(out) + "\r\n"

"""Checks on browser SDP before aiortc parses it.

aiortc raises a zoo of exception types on malformed SDP. Cheap structural checks here give the
sender a precise reason for the common mistakes; anything that still fails inside aiortc is
caught by the peer and reported as ``bad_sdp`` too.

The offer is parsed once, here, and what aiortc receives is this parse written out again, not
the sender's text. That matters because aiortc splits lines with ``str.splitlines()``, which
also breaks at ``\\r``, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028 and U+2029: a
checker that split differently (on ``\\n``, as this one once did) let a candidate or a media
section hide inside what it took for one line. So a line may end only in CRLF or LF, any other
line break or control character inside a line is refused, and the output is re-serialised with
CRLF and verified to split back into exactly the lines that were checked.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from .ice import MediaConfig, candidate_allowed


class SdpError(ValueError):
    """The offer cannot be used; ``str(err)`` is safe to show to the sender."""


# Every character str.splitlines() breaks at besides "\n" (tests/test_sdp_hardening.py derives
# the set from Python itself, so a new one cannot be missed silently).
LINE_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_LINE = re.compile(r"[a-z]=.*", re.DOTALL)
_ALLOWED_MEDIA = {"audio", "video"}
MAX_MEDIA_SECTIONS = 4


@dataclass(frozen=True)
class MediaSection:
    kind: str
    lines: tuple[str, ...]  # starting with its m= line


@dataclass(frozen=True)
class ParsedOffer:
    """An offer split the way aiortc will split what ``serialise`` returns."""

    session: tuple[str, ...]
    sections: tuple[MediaSection, ...]

    def lines(self) -> Iterator[str]:
        yield from self.session
        for section in self.sections:
            yield from section.lines

    def serialise(self) -> str:
        return "".join(f"{line}\r\n" for line in self.lines())


def _forbidden_character(line: str) -> str | None:
    for char in line:
        if char in LINE_BREAKS or (char != "\t" and unicodedata.category(char) == "Cc"):
            return char
    return None


def _attribute(line: str) -> str | None:
    """The attribute name as aiortc reads it (``parse_attr``), or None for a non-``a=`` line."""
    if not line.startswith("a="):
        return None
    return line[2:].split(":", 1)[0]


def _connection_address(line: str) -> str | None:
    """The address of a ``c=`` or ``a=rtcp:`` line, which aiortc keeps and writes out again
    with ``ipaddress`` whenever the remote description is read: one that is not an IP
    address would raise there, long after the offer was accepted."""
    if line.startswith("c="):
        return line[2:].split(" ")[-1]
    if _attribute(line) == "rtcp" and " " in line:
        return line.split(" ")[-1]
    return None


def parse_offer(sdp: str) -> ParsedOffer:
    """Split ``sdp`` into its session part and media sections, refusing what aiortc would
    split differently; raise ``SdpError`` with the line at fault."""
    if "\x00" in sdp:
        raise SdpError("The offer contains a NUL byte.")
    raw_lines = sdp.split("\n")
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(raw_lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        char = _forbidden_character(line)
        if char is not None:
            raise SdpError(
                f"Line {number} contains U+{ord(char):04X}; lines must end in CRLF or LF and "
                "hold no other line break or control character."
            )
        if line:
            lines.append((number, line))
    if not lines or lines[0][1] != "v=0":
        raise SdpError("The offer must start with 'v=0'.")
    session: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for number, line in lines:
        if not _LINE.fullmatch(line):
            raise SdpError(f"Line {number} is not of the form 'x=value'.")
        address = _connection_address(line)
        if address is not None:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                # Firefox names its RTCP address by its mDNS host name (``a=rtcp:9 IN IP4
                # <uuid>.local``), and an address in ``c=`` means nothing once ICE runs: never
                # resolve such a name, never hand it to aiortc (which would raise on it later).
                if not address.endswith(".local"):
                    raise SdpError(
                        f"Line {number}: the connection address is not an IP address."
                    ) from None
                if line.startswith("c="):
                    line = "c=IN IP4 0.0.0.0"
                else:
                    continue  # a=rtcp: with rtcp-mux (which aiortc requires) it is unused
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 4 or not fields[1].isdigit():
                raise SdpError(f"Line {number}: malformed media line.")
            if len(sections) == MAX_MEDIA_SECTIONS:
                raise SdpError("The offer has too many media sections.")
            sections.append((fields[0], [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            session.append(line)
    return ParsedOffer(
        tuple(session), tuple(MediaSection(kind, tuple(body)) for kind, body in sections)
    )


def _keep(line: str, config: MediaConfig) -> bool:
    if _attribute(line) != "candidate":
        return True
    return line.startswith("a=candidate:") and candidate_allowed(line[len("a=") :], config)


def filter_candidates(offer: ParsedOffer, config: MediaConfig) -> ParsedOffer:
    """``offer`` without the candidates the server must not contact (media.relay.ice)."""
    return ParsedOffer(
        tuple(line for line in offer.session if _keep(line, config)),
        tuple(
            MediaSection(s.kind, tuple(line for line in s.lines if _keep(line, config)))
            for s in offer.sections
        ),
    )


def _has_fingerprint(lines: Iterator[str] | tuple[str, ...]) -> bool:
    return any(line.startswith("a=fingerprint:") for line in lines)


def _require_fingerprints(offer: ParsedOffer) -> None:
    """A DTLS fingerprint at session level (aiortc copies it into every section) or in every
    media section. aiortc accepts a section without one and only its background connect task
    fails, with an AssertionError nobody collects, leaving the call without media."""
    if _has_fingerprint(offer.session):
        return
    missing = [n for n, s in enumerate(offer.sections, start=1) if not _has_fingerprint(s.lines)]
    if len(missing) == len(offer.sections):
        raise SdpError("The offer lacks a DTLS fingerprint.")
    if missing:
        which = ", ".join(str(n) for n in missing)
        raise SdpError(
            f"Media section(s) {which} lack a DTLS fingerprint; put one at session level or "
            "in every media section."
        )


def sanitize_offer(sdp: str, config: MediaConfig) -> str:
    """Validate an offer's structure and drop unsafe ICE candidates; return the cleaned SDP,
    the only text of the offer aiortc is given."""
    offer = filter_candidates(parse_offer(sdp), config)
    if not offer.sections:
        raise SdpError("The offer has no media sections.")
    unknown = sorted({s.kind for s in offer.sections} - _ALLOWED_MEDIA)
    if unknown:
        raise SdpError(f"Unsupported media kind(s): {', '.join(unknown)}.")
    if not any(line.startswith("a=ice-ufrag:") for line in offer.lines()):
        raise SdpError("The offer lacks ICE credentials.")
    _require_fingerprints(offer)
    text = offer.serialise()
    if text.splitlines() != list(offer.lines()):  # what aiortc will see is what was checked
        raise SdpError("The offer's lines could not be separated unambiguously.")
    return text

"""The JSON shape of alliance signals: what the panel receives and what session rows store.

The engine's dataclasses stay pure (no pydantic); this module declares their wire form once,
as pydantic models with the same field names, so the outbound ``signals`` message and the API
responses are typed and the JSON is generated rather than hand-written. Browser code
(web/js/panel.js, summary.js) and rows persisted by earlier versions depend on these keys and
on the rounding (3 decimals, 4 for shares: sub-millisecond digits are noise and bloat every
snapshot), so both are part of the contract; ``tests/test_types.py`` pins them to a fixture.

Reading a stored row back into the engine's own ``Snapshot`` needs no mirror at all: pydantic
validates the stdlib dataclasses directly (``snapshot_from_json``).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, TypeAdapter

from media.participants import Role

from .engine import Snapshot, TimelineSecond

__all__ = [
    "RolePair",
    "SnapshotPayload",
    "TimelineSecond",
    "WindowPayload",
    "snapshot_from_json",
    "snapshot_json",
    "timeline_json",
]


def _round(digits: int) -> PlainSerializer:
    def serialise(value: float | None) -> float | None:
        return None if value is None else round(value, digits)

    return PlainSerializer(serialise, return_type=float | None)


Seconds = Annotated[float, _round(3)]
MaybeSeconds = Annotated[float | None, _round(3)]
Share = Annotated[float | None, _round(4)]

T = TypeVar("T")


class _Payload(BaseModel):
    # from_attributes: built straight from the engine's frozen dataclasses.
    model_config = ConfigDict(frozen=True, from_attributes=True, extra="forbid")


class RolePair(_Payload, Generic[T]):
    """The engine's ``ByRole``: ``{"therapist": …, "client": …}``."""

    therapist: T
    client: T


class WindowPayload(_Payload):
    """``WindowTotals``: the panel's "last 5 minutes"."""

    duration_s: Seconds
    therapist_talk_s: Seconds
    client_talk_s: Seconds
    client_share: Share
    silence_s: Seconds
    overlap_s: Seconds
    long_silences: int
    turns: int
    interruptions: RolePair[int]
    backchannels: int
    absent_s: Seconds


class SnapshotPayload(_Payload):
    """``Snapshot``, field for field and in the same order (the JSON keeps that order)."""

    duration_s: Seconds
    therapist_talk_s: Seconds
    client_talk_s: Seconds
    client_share: Share
    silence_s: Seconds
    overlap_s: Seconds
    long_silences: int
    longest_monologue_s: RolePair[Seconds]
    turns: int
    interruptions: RolePair[int]
    backchannels: int
    median_response_latency_s: RolePair[MaybeSeconds]
    absent_s: Seconds
    last_5min: WindowPayload
    speaking: list[Role]
    current_silence_s: Seconds

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotPayload:
        return cls.model_validate(snapshot)


_SNAPSHOT: TypeAdapter[Snapshot] = TypeAdapter(Snapshot)
_TIMELINE: TypeAdapter[list[TimelineSecond]] = TypeAdapter(list[TimelineSecond])


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """The JSON object for a snapshot, as stored in ``sessions.metrics`` and shown by the CLI."""
    return SnapshotPayload.of(snapshot).model_dump(mode="json")


def snapshot_from_json(data: Any) -> Snapshot:
    """A stored or received snapshot object back as the engine's dataclass (old rows too)."""
    return _SNAPSHOT.validate_python(data)


def timeline_json(seconds: list[TimelineSecond]) -> list[dict[str, Any]]:
    """The 1-second timeline as JSON objects (``second``, who talked, who was absent)."""
    rows: list[dict[str, Any]] = _TIMELINE.dump_python(seconds, mode="json")
    return rows

"""Alliance signals from two recorded tracks (``rapport analyze``).

The point of this module is that it is *not* a second implementation: recordings are
decoded, resampled to what the live path sees (48 kHz mono s16, 20 ms frames) and pushed
through the same ``ParticipantAudio`` → ``VoiceActivityDetector`` → ``SessionClockEngine`` chain,
so an offline number and a live number for the same audio agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike

import av
import numpy as np

from media.alliance.engine import (
    ROLES,
    ParticipantAudio,
    Role,
    SessionClockEngine,
    SignalConfig,
    Snapshot,
)
from media.alliance.vad import VadTuning

__all__ = ["LIVE_SAMPLE_RATE", "analyze_files", "analyze_pcm", "decode_mono_48k"]

LIVE_SAMPLE_RATE = 48000
#: Frames pushed per role before ticking through them (the live thread's 100 ms wake-up).
_BLOCK_FRAMES = 5


def decode_mono_48k(path: str | PathLike[str]) -> np.ndarray:
    """Decode any audio file PyAV can read to 48 kHz mono int16 (channels averaged)."""
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=LIVE_SAMPLE_RATE)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(chunks).astype(np.int16, copy=False)


def _frames(pcm: np.ndarray, frame_samples: int) -> Iterator[np.ndarray]:
    """Whole frames; a trailing partial frame is zero-padded rather than lost."""
    for start in range(0, pcm.size, frame_samples):
        frame = pcm[start : start + frame_samples]
        if frame.size < frame_samples:
            frame = np.pad(frame, (0, frame_samples - frame.size))
        yield frame


def analyze_pcm(
    tracks: dict[Role, np.ndarray],
    config: SignalConfig | None = None,
    *,
    aggressiveness: int = 2,
    vad_tuning: VadTuning | None = None,
) -> Snapshot:
    """Run the live chain over already-decoded 48 kHz mono int16 tracks.

    When the recordings differ in length, the shorter participant counts as *absent* after
    its end: we do not know that they were silent, so it must not become "silence".
    """
    feed = ParticipantAudio(
        SessionClockEngine(config),
        sample_rate=LIVE_SAMPLE_RATE,
        aggressiveness=aggressiveness,
        vad_tuning=vad_tuning,
    )
    n = feed.frame_samples
    iters = {role: _frames(tracks[role], n) for role in ROLES}
    lengths = {role: -(-tracks[role].size // n) for role in ROLES}
    total = max(lengths.values())
    for role in ROLES:
        feed.set_present(role, lengths[role] > 0)
    # A block of frames per role, then a tick per frame, like the live thread's wake-ups:
    # the same verdicts as frame by frame, and Silero runs both tracks in one batch.
    for block in range(0, total, _BLOCK_FRAMES):
        end = min(total, block + _BLOCK_FRAMES)
        for role in ROLES:
            for _ in range(block, min(end, lengths[role])):
                feed.push(role, next(iters[role]))
        for index in range(block, end):
            for role in ROLES:
                if index == lengths[role]:
                    feed.set_present(role, False)
            feed.tick()
    return feed.engine.finalize()


def analyze_files(
    therapist_path: str | PathLike[str],
    client_path: str | PathLike[str],
    config: SignalConfig | None = None,
    vad_tuning: VadTuning | None = None,
) -> Snapshot:
    """Final alliance-signal snapshot for a therapist recording and a client recording
    (any sample rate or channel count PyAV can decode)."""
    tracks = {
        Role.THERAPIST: decode_mono_48k(therapist_path),
        Role.CLIENT: decode_mono_48k(client_path),
    }
    return analyze_pcm(tracks, config, vad_tuning=vad_tuning)

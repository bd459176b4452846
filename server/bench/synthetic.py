"""Synthetic media for benchmarks and tests: speech-like audio without a TTS engine.

The voiced signal is a harmonic series with a wandering pitch, shaped by three formant-like
resonances and a 4 Hz syllable rhythm: close enough to speech that voice activity detection
treats it as such, yet deterministic and free of external tools.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Sequence

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960


def voiced_speech(seconds: float, f0: float = 130.0, level: float = 0.5) -> np.ndarray:
    """Speech-like int16 mono samples at 48 kHz."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    signal = sum((1 / k) * np.sin(k * phase) for k in range(1, 30))
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    envelope = 0.05 + sum(
        np.exp(-(((freqs - centre) / width) ** 2))
        for centre, width in ((700, 150), (1200, 200), (2600, 300))
    )
    shaped = np.fft.irfft(spectrum * envelope, n) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t) ** 2)
    peak = float(np.max(np.abs(shaped))) or 1.0
    return (shaped / peak * level * 32767).astype(np.int16)


class ScheduledSpeechTrack(MediaStreamTrack):
    """Silence with speech bursts at given offsets; remembers when each burst really began.

    ``onsets`` holds the monotonic time at which the first frame of each burst was handed to
    the sender, which is the reference for end-to-end latency measurements.
    """

    kind = "audio"

    def __init__(self, bursts: Sequence[tuple[float, float]]) -> None:
        super().__init__()
        self._bursts = [(int(s * SAMPLE_RATE), int((s + d) * SAMPLE_RATE)) for s, d in bursts]
        longest = max((d for _, d in bursts), default=0.0)
        self._voice = voiced_speech(longest + 0.1)
        self._n = 0
        self._start: float | None = None
        self.onsets: list[float] = []

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._n / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        for begin, end in self._bursts:
            if begin <= self._n < end:
                offset = self._n - begin
                piece = self._voice[offset : offset + FRAME_SAMPLES]
                chunk[: piece.size] = piece
                if offset < FRAME_SAMPLES:
                    self.onsets.append(time.monotonic())
                break
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += FRAME_SAMPLES
        return frame


class SilenceTrack(ScheduledSpeechTrack):
    def __init__(self) -> None:
        super().__init__([])

"""Silero VAD on onnxruntime (media/alliance/silero.py): hears speech, not noise, and gives
the same answer for the same audio however the frames are cut."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import media.alliance.silero as silero
from media.alliance.silero import (
    SILERO_MODEL_SHA256,
    SileroTrack,
    SileroUnavailable,
    silero_model_path,
)
from media.alliance.vad import VadTuning, VoiceActivityDetector
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    _noise,
    active_rms_db,
    frame_mask,
    synthesize,
)
from tests.test_vad import classify, to_int16

LINES = (
    ("I keep thinking about what my boss said on Monday.", "en+f3"),
    ("Maybe a six, or a seven on the bad days.", "en-us"),
)


def _speech_in_noise(kind: str, level_dbfs: float = -30.0) -> tuple[np.ndarray, np.ndarray]:
    """Two espeak utterances at ``level_dbfs`` in 14 s of ``kind`` noise at -50 dBFS, with
    the truth mask per 20 ms frame."""
    rng = np.random.default_rng(4)
    n = 14 * SAMPLE_RATE
    x = _noise(kind, n, -50.0, rng)
    mask = np.zeros(n // FRAME_SAMPLES, dtype=bool)
    at = 3.0
    for text, voice in LINES:
        utt = synthesize(text, voice, 160).astype(np.float64)
        utt *= 10 ** ((level_dbfs - active_rms_db(utt)) / 20)
        offset = round(at * SAMPLE_RATE)
        x[offset : offset + utt.size] += utt
        mask |= frame_mask(utt.astype(np.float32), offset, mask.size)
        at += utt.size / SAMPLE_RATE + 2.0
    return to_int16(x), mask


def _probabilities(pcm: np.ndarray, piece: int, every: int) -> list[float]:
    """Feed ``pcm`` in pieces of ``piece`` samples; the probability after each ``every``."""
    track = SileroTrack()
    out = []
    for start in range(0, pcm.size, piece):
        track.push(pcm[start : start + piece])
        if (start + piece) % every == 0:
            out.append(track.probability)
    return out


def test_the_shipped_model_is_silero_s_and_runs_without_torch() -> None:
    import hashlib
    import sys

    path = silero_model_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SILERO_MODEL_SHA256
    SileroTrack()  # loads it with onnxruntime alone
    assert "torch" not in sys.modules


@pytest.mark.parametrize("kind", ["white", "pink", "hum"])
def test_hears_espeak_speech_and_not_the_noise_around_it(kind: str) -> None:
    pcm, mask = _speech_in_noise(kind)
    track = SileroTrack()
    n = FRAME_SAMPLES
    prob = np.array([track.push(pcm[i * n : (i + 1) * n]) for i in range(pcm.size // n)])
    assert prob[mask].mean() > 0.6
    # Noise alone (the lead-in, and the pause between the utterances, 300 ms clear of
    # speech): never "speech".
    quiet = ~np.convolve(mask, np.ones(31), mode="same").astype(bool)
    quiet[:5] = False
    assert quiet.sum() > 200
    assert prob[quiet].max() < 0.5


def test_same_audio_same_probabilities_however_it_is_framed() -> None:
    pcm, _ = _speech_in_noise("white")
    every = 7680  # 160 ms: a whole number of 20 ms frames, 10 ms frames and 32 ms chunks
    frames = _probabilities(pcm, 960, every)
    halves = _probabilities(pcm, 480, every)
    assert len(frames) == len(halves) > 80
    np.testing.assert_allclose(frames, halves, rtol=0, atol=1e-6)
    assert frames == _probabilities(pcm, 960, every)  # deterministic, run to run
    assert max(frames) > 0.9 and min(frames) < 0.1


def test_reset_forgets_the_audio() -> None:
    pcm, _ = _speech_in_noise("white")
    track = SileroTrack()
    fresh = [track.push(pcm[i : i + 960]) for i in range(0, 96000, 960)]
    for i in range(96000, 300000, 960):
        track.push(pcm[i : i + 960])
    track.reset()
    assert track.probability == 0.0
    assert [track.push(pcm[i : i + 960]) for i in range(0, 96000, 960)] == fresh


@pytest.mark.parametrize("model", ["silero", "either"])
def test_detector_with_silero_catches_speech_and_rejects_noise(model: str) -> None:
    pcm, mask = _speech_in_noise("pink", level_dbfs=-35.0)
    vad = VoiceActivityDetector(tuning=VadTuning(voice_model=model))  # type: ignore[arg-type]
    speech = classify(pcm, vad)
    assert (speech & mask).sum() / mask.sum() > 0.6
    assert (speech & ~mask).sum() <= 0.02 * (~mask).sum()


def test_without_onnxruntime_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    silero._session.cache_clear()
    try:
        with pytest.raises(SileroUnavailable, match="pip install onnxruntime"):
            VoiceActivityDetector(tuning=VadTuning(voice_model="either"))
    finally:
        silero._session.cache_clear()


def test_rejects_unknown_model_and_rates() -> None:
    with pytest.raises(ValueError, match="voice_model"):
        VoiceActivityDetector(tuning=VadTuning(voice_model="rnnoise"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 16000"):
        SileroTrack(sample_rate=8000)

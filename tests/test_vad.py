"""Voice activity: quiet speakers are caught, steady room noise and silence are not."""

from __future__ import annotations

import numpy as np
import pytest

from media.alliance.engine import Role, SignalEngine
from media.alliance.vad import SILENCE_DBFS, VoiceActivityDetector, downmix, frame_dbfs
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    _noise,
    espeak_in_noise,
    synthetic_voice,
)

NOISES = ("white", "pink", "brown", "hum")


def to_int16(x: np.ndarray) -> np.ndarray:
    clipped: np.ndarray = np.clip(x, -1, 1)
    return (clipped * 32767).astype(np.int16)


def classify(pcm: np.ndarray, detector: VoiceActivityDetector | None = None) -> np.ndarray:
    vad = detector or VoiceActivityDetector()
    n = vad.frame_samples
    return np.array([vad.is_speech(pcm[i * n : (i + 1) * n]) for i in range(pcm.size // n)])


def talk_seconds(speech: np.ndarray) -> float:
    """Talk time after the definitions (bridging, minimum length) — what the panel shows."""
    engine = SignalEngine()
    for value in speech.tolist():
        engine.advance({Role.THERAPIST: value, Role.CLIENT: False})
    return engine.finalize().therapist_talk_s


def test_frame_dbfs_reference_points() -> None:
    t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE
    sine = (32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    assert frame_dbfs(sine) == pytest.approx(-3.01, abs=0.02)
    assert frame_dbfs(np.zeros(FRAME_SAMPLES, dtype=np.int16)) == SILENCE_DBFS
    assert frame_dbfs((sine // 100).astype(np.int16)) == pytest.approx(-43.0, abs=0.1)


def test_silence_is_never_speech() -> None:
    vad = VoiceActivityDetector()
    zeros = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    assert not any(vad.is_speech(zeros) for _ in range(200))
    # Not even right after loud speech, when the detector is in its "hold" state.
    speech = to_int16(synthetic_voice(1.0, -10))
    assert classify(speech, vad).mean() > 0.9
    assert not vad.is_speech(zeros)
    # Nor the faintest dither.
    dither = np.random.default_rng(0).integers(-1, 2, FRAME_SAMPLES).astype(np.int16)
    assert not any(vad.is_speech(dither) for _ in range(100))


@pytest.mark.parametrize("kind", NOISES)
def test_steady_noise_at_minus_45_dbfs_is_not_speech(kind: str) -> None:
    rng = np.random.default_rng(7)
    noise = to_int16(_noise(kind, 30 * SAMPLE_RATE, -45.0, rng))
    speech = classify(noise)
    assert speech.sum() <= 5  # a few isolated frames in 1500, never a talk segment
    assert talk_seconds(speech) == 0


@pytest.mark.parametrize("kind", ["none", *NOISES])
def test_quiet_synthetic_voice_at_minus_35_dbfs_is_detected(kind: str) -> None:
    rng = np.random.default_rng(3)
    n = 12 * SAMPLE_RATE
    x = _noise(kind, n, -45.0, rng)
    x[4 * SAMPLE_RATE : 8 * SAMPLE_RATE] += synthetic_voice(4.0, -35.0, seed=1)
    speech = classify(to_int16(x))
    assert speech[200:400].mean() > 0.6
    assert speech[:190].sum() + speech[410:].sum() <= 2
    # This crude voice is harder than real speech (see the espeak test below for that).
    assert 3.2 <= talk_seconds(speech) <= 4.1


@pytest.mark.parametrize("kind", ["none", "white", "pink", "brown", "hum"])
def test_quiet_espeak_speech_at_minus_35_dbfs_is_detected(kind: str) -> None:
    x, mask = espeak_in_noise(kind, -35.0)
    speech = classify(to_int16(x))
    hit_rate = (speech & mask).sum() / mask.sum()
    assert hit_rate > (0.9 if kind == "none" else 0.55)
    # Nothing out of the blue: no speech 200 ms or more from any truth speech frame ...
    near = np.convolve(mask, np.ones(21), mode="same") > 0
    assert not (speech & ~near).any()
    # ... and few frames at the edges: Silero's assist carries word ends that the truth's
    # 35 dB range cuts (measured 9-10 of 443 in pink and brown noise, webrtcvad alone <= 8).
    assert (speech & ~mask).sum() <= 0.03 * (~mask).sum()
    assert talk_seconds(speech) == pytest.approx(talk_seconds(mask), rel=0.08)


@pytest.mark.parametrize(("kind", "learned_s"), [("white", 5), ("pink", 8), ("brown", 16)])
def test_noise_floor_follows_a_fan_switched_on(kind: str, learned_s: int) -> None:
    """A quiet room, then steady noise at -45 dBFS: learned within seconds. Rumble is
    learned more slowly because its level swings like speech does."""
    rng = np.random.default_rng(5)
    quiet = _noise("white", 10 * SAMPLE_RATE, -75.0, rng)
    fan = _noise(kind, 40 * SAMPLE_RATE, -45.0, rng)
    speech = classify(to_int16(np.concatenate([quiet, fan])))
    assert speech[(10 + learned_s) * 50 :].sum() == 0


def test_talking_from_the_first_frame_is_not_taken_for_the_room() -> None:
    speech = classify(to_int16(synthetic_voice(3.0, -20)))
    assert talk_seconds(speech) == pytest.approx(3.0, abs=0.2)


@pytest.mark.parametrize(("rate", "frame_ms"), [(8000, 10), (16000, 30), (32000, 20)])
def test_other_rates_and_frame_sizes(rate: int, frame_ms: int) -> None:
    vad = VoiceActivityDetector(sample_rate=rate, frame_ms=frame_ms)
    assert vad.frame_samples == rate * frame_ms // 1000
    t = np.arange(2 * rate) / rate
    phase = 2 * np.pi * (150 * t + 2.0 * np.sin(2 * np.pi * 4 * t))
    tone = sum(np.sin(h * phase) / h for h in range(1, 8))
    pcm = to_int16(0.1 * np.asarray(tone))
    speech = classify(np.concatenate([np.zeros(rate, dtype=np.int16), pcm]), vad)
    half = speech.size // 3
    assert not speech[:half].any()
    assert speech[half:].mean() > 0.85


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError):
        VoiceActivityDetector(sample_rate=44100)
    with pytest.raises(ValueError):
        VoiceActivityDetector(frame_ms=25)
    with pytest.raises(ValueError):
        VoiceActivityDetector().is_speech(np.zeros(480, dtype=np.int16))


def test_downmix_averages_channels() -> None:
    stereo = np.array([[100, 300, -200, -400, 32767, 32767]], dtype=np.int16)
    assert downmix(stereo, 2).tolist() == [200, -300, 32767]
    assert downmix(np.array([1, 2, 3], dtype=np.int16), 1).tolist() == [1, 2, 3]

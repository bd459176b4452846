"""Word ends under the noise: the live glue carries a run of the owner's speech through the
few frames the detector rejects while Silero still hears voice (VadTuning.carry_frames),
after attribution, so the quiet frames neither teach nor trip its level model.

Measured on this fixture (espeak at -40 dBFS over -45 dBFS noise, 257 truth frames): without
the carry 219 (white), 226 (pink), 228 (hum) truth frames are heard; with it 248-251, and
every added frame lies within 200 ms of truth speech.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from media.alliance.engine import ParticipantAudio, Role, SignalEngine
from media.alliance.vad import WEBRTC_ONLY, VadTuning
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    espeak_in_noise,
)


def _quiet_speech_in_noise(kind: str) -> tuple[np.ndarray, np.ndarray]:
    x, mask = espeak_in_noise(kind, -40.0)
    return (np.clip(x, -1, 1) * 32767).astype(np.int16), mask


def _verdicts(pcm: np.ndarray, frames: int, tuning: VadTuning | None = None) -> np.ndarray:
    """The therapist's attributed verdicts through the live glue; the client is present
    and silent (digital silence: no echo, no voice)."""
    feed = ParticipantAudio(vad_tuning=tuning)
    feed.set_present(Role.THERAPIST, True)
    feed.set_present(Role.CLIENT, True)
    silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    out = []
    for i in range(frames):
        feed.push(Role.THERAPIST, pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        feed.push(Role.CLIENT, silence)
        feed.tick()
        out.append(bool(feed.last_values[Role.THERAPIST]))
    return np.array(out)


def _talk_s(speech: np.ndarray) -> float:
    engine = SignalEngine()
    for value in speech.tolist():
        engine.advance({Role.THERAPIST: value, Role.CLIENT: False})
    return engine.finalize().therapist_talk_s


@pytest.mark.parametrize("kind", ["white", "pink", "hum"])
def test_word_ends_under_the_noise_are_carried_while_silero_hears_voice(kind: str) -> None:
    pcm, mask = _quiet_speech_in_noise(kind)
    speech = _verdicts(pcm, mask.size)
    assert (speech & mask).sum() >= 0.95 * mask.sum()
    # Only word ends are carried: nothing 200 ms or more from truth speech ...
    near = np.convolve(mask, np.ones(21), mode="same") > 0
    assert not (speech & ~near).any()
    # ... and the panel's talk time stays on the truth's.
    assert _talk_s(speech) == pytest.approx(_talk_s(mask), rel=0.05)


def test_without_silero_nothing_is_carried() -> None:
    """The carry needs Silero's opinion: webrtcvad alone gives the detector's verdicts."""
    pcm, mask = _quiet_speech_in_noise("pink")
    carried = _verdicts(pcm, mask.size, WEBRTC_ONLY)
    plain = _verdicts(pcm, mask.size, replace(WEBRTC_ONLY, carry_frames=0))
    assert np.array_equal(carried, plain)

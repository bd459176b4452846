"""Silero VAD on onnxruntime (media/alliance/silero.py): hears speech, not noise, and gives
the same answer for the same audio however the frames are cut."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import media.alliance.silero as silero
from media.alliance.silero import (
    SILERO_MODEL_SHA256,
    SileroTrack,
    SileroUnavailable,
    silero_model_path,
)
from media.alliance.vad import (
    SILERO_ASSIST,
    WEBRTC_ONLY,
    FrameFeatures,
    VadTuning,
    VoiceActivityDetector,
)
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    espeak_in_noise,
)
from tests.test_vad import classify, to_int16

ROOT = Path(__file__).resolve().parents[1]

LINES = (
    ("I keep thinking about what my boss said on Monday.", "en+f3"),
    ("Maybe a six, or a seven on the bad days.", "en-us"),
)


def _speech_in_noise(kind: str, level_dbfs: float = -30.0) -> tuple[np.ndarray, np.ndarray]:
    """Two espeak utterances at ``level_dbfs`` in 14 s of ``kind`` noise at -50 dBFS, with
    the truth mask per 20 ms frame."""
    x, mask = espeak_in_noise(kind, level_dbfs, noise_dbfs=-50.0, seed=4, lines=LINES)
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


def _frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    n = FRAME_SAMPLES
    return [pcm[i * n : (i + 1) * n] for i in range(pcm.size // n)]


def test_batched_tracks_give_each_track_its_own_probabilities() -> None:
    """Two tracks through the model together (one run, a row per track, uneven batches like
    a wake-up's worth of frames that arrived unevenly) give exactly what each track gives
    alone, frame by frame: their recurrent states never mix."""
    speech, _ = _speech_in_noise("white")
    noise, _ = _speech_in_noise("hum", level_dbfs=-80.0)  # the same hum, nearly no speech
    alone = {
        name: [track.push(f) for track in [SileroTrack()] for f in _frames_of(pcm)]
        for name, pcm in (("speech", speech), ("noise", noise))
    }
    # The two differ, so a mixed-up state would show.
    assert max(alone["speech"]) > 0.9 and max(alone["noise"]) < 0.5

    tracks = [SileroTrack(), SileroTrack()]
    frames = [_frames_of(speech), _frames_of(noise)]
    got: list[list[float]] = [[], []]
    cursor = [0, 0]
    rng = np.random.default_rng(1)
    while cursor[0] < len(frames[0]) or cursor[1] < len(frames[1]):
        counts = [int(rng.integers(0, 9)) for _ in tracks]  # 0-8 frames each, often unequal
        pcm, sizes = [], []
        for i, count in enumerate(counts):
            take = frames[i][cursor[i] : cursor[i] + count]
            cursor[i] += len(take)
            pcm.append(np.concatenate(take) if take else np.zeros(0, dtype=np.int16))
            sizes.append((FRAME_SAMPLES,) * len(take))
        for i, probs in enumerate(silero.silero_probabilities(tracks, pcm, sizes)):
            got[i].extend(probs.tolist())
    np.testing.assert_allclose(got[0], alone["speech"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[1], alone["noise"], rtol=0, atol=1e-6)


def test_live_glue_batches_silero_without_changing_a_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ParticipantAudio runs both tracks' frames through Silero together (one model run for
    both), and its detectors still see what one detector per track sees frame by frame
    (same features, same order), however the frames arrive."""
    from media.alliance.engine import ParticipantAudio
    from media.participants import Role

    session = silero.silero_session()
    batch_sizes: list[int] = []

    class CountingSession:
        def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
            batch_sizes.append(feed["input"].shape[0])
            return session.run(names, feed)

    counting = CountingSession()

    speech, _ = _speech_in_noise("pink", level_dbfs=-35.0)
    other, _ = _speech_in_noise("white", level_dbfs=-28.0)
    other = other[::-1].copy()  # different speech at different times
    reference = {}
    for role, pcm in ((Role.THERAPIST, speech), (Role.CLIENT, other)):
        vad = VoiceActivityDetector(tuning=SILERO_ASSIST)
        reference[role] = [vad.analyze(f) for f in _frames_of(pcm)]

    monkeypatch.setattr(silero, "_session", lambda: counting)
    audio = ParticipantAudio(vad_tuning=SILERO_ASSIST)
    for role in Role:
        audio.set_present(role, True)
    seen: dict[Role, list[FrameFeatures]] = {role: [] for role in Role}
    originals = {role: audio.detectors[role].analyze for role in Role}

    def spy(role: Role) -> Any:
        def analyze(frame: np.ndarray, silero: float | None = None) -> FrameFeatures:
            features = originals[role](frame, silero)
            seen[role].append(features)
            return features

        return analyze

    for role in Role:
        audio.detectors[role].analyze = spy(role)  # type: ignore[method-assign]
    rng = np.random.default_rng(2)
    tracks = {Role.THERAPIST: speech, Role.CLIENT: other}
    at = dict.fromkeys(Role, 0)
    while any(at[role] < tracks[role].size for role in Role):
        for role in Role:
            size = int(rng.integers(0, 6)) * 480 + int(rng.integers(0, 2)) * 137
            audio.push(role, tracks[role][at[role] : at[role] + size])
            at[role] += size
        for _ in range(int(rng.integers(1, 7))):
            audio.tick()
    audio.tick()
    for role in Role:
        got = seen[role]
        want = reference[role]
        assert len(got) == len(want)
        assert [f.speech for f in got] == [f.speech for f in want]
        assert [(f.level_dbfs, f.floor_dbfs, f.margin_db) for f in got] == [
            (f.level_dbfs, f.floor_dbfs, f.margin_db) for f in want
        ]
    assert sum(f.speech for f in seen[Role.THERAPIST]) > 50
    # 14 s per track is ~440 chunks each: many went through in runs carrying both tracks.
    assert batch_sizes.count(2) > 150 and set(batch_sizes) <= {1, 2}


def test_the_silero_assist_setting_reaches_the_live_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typing import cast

    from server.alliance_hub import SignalsHub
    from server.db import Database
    from server.settings import Settings

    monkeypatch.setenv("RAPPORT_SILERO_ASSIST", "true")
    assert Settings().silero_assist is True
    for assist in (True, False):
        hub = SignalsHub(cast(Database, None), silero_assist=assist)
        signals = hub.for_session("session-1")
        try:
            detectors = signals._audio.detectors.values()
            assert [d.silero_track is not None for d in detectors] == [assist, assist]
            assert all(d.tuning == (SILERO_ASSIST if assist else WEBRTC_ONLY) for d in detectors)
        finally:
            hub.thread.stop()
    # A server that cannot run the model says so when it starts, not at the first session.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    silero._session.cache_clear()
    try:
        with pytest.raises(SileroUnavailable, match="pip install onnxruntime"):
            SignalsHub(cast(Database, None), silero_assist=True)
        SignalsHub(cast(Database, None), silero_assist=False)  # webrtcvad alone needs nothing
    finally:
        silero._session.cache_clear()


def test_onnxruntime_keeps_no_telemetry_on_disk(tmp_path: Path) -> None:
    """onnxruntime's wheels keep a device id and an event cache under ~/.cache/Microsoft
    (and would upload them): loading and running Silero through our code writes nothing
    into the home directory, whatever the environment said about telemetry before."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HOME")}
    env.update(HOME=str(tmp_path), ORT_DISABLE_TELEMETRY="0", PYTHONPATH=str(ROOT))
    script = (
        "import numpy as np\n"
        "from media.alliance.silero import SileroTrack\n"
        "track = SileroTrack()\n"
        "for _ in range(20):\n"
        "    track.push(np.zeros(960, dtype=np.int16))\n"
        "print(track.probability)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []

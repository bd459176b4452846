"""Silero VAD in numpy (media/alliance/silero.py): the network of the shipped ONNX file, as
onnxruntime runs it; hears speech, not noise; and gives the same answer for the same audio
however the frames are cut."""

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
    SileroModel,
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


def _onnxruntime_session() -> Any:
    """onnxruntime running the shipped ONNX file itself: the reference (a test dependency;
    telemetry off before the first import, as its wheels would otherwise keep a device id)."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(silero_model_path()), options, providers=["CPUExecutionProvider"]
    )


def _run_silero_in_a_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter runs one track through 20 frames; prints which of torch, onnx and
    onnxruntime got imported (none should)."""
    script = (
        "import sys, numpy as np\n"
        "from media.alliance.silero import SileroTrack\n"
        "track = SileroTrack()\n"
        "for _ in range(20):\n"
        "    track.push(np.zeros(960, dtype=np.int16))\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_shipped_model_is_silero_s_and_runs_without_torch_or_onnxruntime() -> None:
    import hashlib

    path = silero_model_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SILERO_MODEL_SHA256
    done = _run_silero_in_a_subprocess({**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]"


def test_the_numpy_network_is_the_onnx_model_as_onnxruntime_runs_it() -> None:
    """Chunk by chunk over 40 s of speech in noise and quiet, the numpy network gives what
    onnxruntime gives on the ONNX file (same state carried along): within float32 rounding,
    and never on the other side of a threshold the detector uses. Fails if a weight, the
    STFT padding, a convolution's stride or the LSTM's gate order is wrong."""
    session = _onnxruntime_session()
    loud, _ = _speech_in_noise("pink", level_dbfs=-25.0)
    quiet, _ = _speech_in_noise("white", level_dbfs=-45.0)
    track = SileroTrack()
    pcm = np.concatenate([loud, quiet, loud[::-1]])
    n_frames = pcm.size // FRAME_SAMPLES
    low, _ = track._decimate(pcm[: n_frames * FRAME_SAMPLES], np.array([n_frames * 960]))
    signal = np.concatenate([np.zeros(64, dtype=np.float32), low])
    count = (signal.size - 64) // 512
    chunks = np.stack([signal[k * 512 : k * 512 + 576] for k in range(count)])
    state = np.zeros((2, 1, 128), dtype=np.float32)
    reference = np.empty(count, dtype=np.float32)
    for k in range(count):
        out, state = session.run(
            None, {"input": chunks[k : k + 1], "state": state, "sr": np.array(16000)}
        )
        reference[k] = out[0, 0]
    model = silero.silero_model()
    gates = model.input_gates(chunks)
    h = np.zeros((1, 128), dtype=np.float32)
    c = np.zeros((1, 128), dtype=np.float32)
    ours = np.empty(count, dtype=np.float32)
    for k in range(count):
        probability, h, c = model.step(gates[k : k + 1], h, c)
        ours[k] = probability[0]
    assert count > 1200 and reference.max() > 0.9 and reference.min() < 0.05
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-5)
    for threshold in (0.35, 0.5, 0.8):
        assert ((ours >= threshold) == (reference >= threshold)).all()
    np.testing.assert_allclose(
        np.concatenate([h[0], c[0]]), state.reshape(-1), rtol=1e-5, atol=2e-5
    )


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


def test_without_the_weights_the_error_names_the_missing_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(silero, "SILERO_WEIGHTS_FILE", "no-such-weights.npz")
    silero._model.cache_clear()
    try:
        with pytest.raises(SileroUnavailable, match=r"no-such-weights\.npz is missing"):
            VoiceActivityDetector(tuning=VadTuning(voice_model="either"))
    finally:
        silero._model.cache_clear()


def test_unreadable_weights_are_refused_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "weights.npz"
    np.savez(broken, stft_basis=np.zeros((258, 256), dtype=np.float32))
    with pytest.raises(SileroUnavailable, match="cannot read the Silero VAD weights"):
        SileroModel(broken)


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

    model = silero.silero_model()
    batch_sizes: list[int] = []

    class CountingModel:
        def input_gates(self, chunks: np.ndarray) -> np.ndarray:
            return model.input_gates(chunks)

        def step(self, gates: np.ndarray, h: np.ndarray, c: np.ndarray) -> Any:
            batch_sizes.append(gates.shape[0])
            return model.step(gates, h, c)

    counting = CountingModel()

    speech, _ = _speech_in_noise("pink", level_dbfs=-35.0)
    other, _ = _speech_in_noise("white", level_dbfs=-28.0)
    other = other[::-1].copy()  # different speech at different times
    reference = {}
    for role, pcm in ((Role.THERAPIST, speech), (Role.CLIENT, other)):
        vad = VoiceActivityDetector(tuning=SILERO_ASSIST)
        reference[role] = [vad.analyze(f) for f in _frames_of(pcm)]

    monkeypatch.setattr(silero, "silero_model", lambda: counting)
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
    # 14 s per track is ~440 chunks each: many went through in steps carrying both tracks.
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
    monkeypatch.setattr(silero, "SILERO_WEIGHTS_FILE", "no-such-weights.npz")
    silero._model.cache_clear()
    try:
        with pytest.raises(SileroUnavailable, match=r"no-such-weights\.npz is missing"):
            SignalsHub(cast(Database, None), silero_assist=True)
        SignalsHub(cast(Database, None), silero_assist=False)  # webrtcvad alone needs nothing
    finally:
        silero._model.cache_clear()


def test_running_silero_writes_nothing_to_the_home_directory(tmp_path: Path) -> None:
    """Loading and running the model writes nothing under HOME (onnxruntime's wheels kept a
    device id and an event cache under ~/.cache/Microsoft; the server no longer loads it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HOME")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    _run_silero_in_a_subprocess(env)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []

"""The room-fixture generator does what its conditions say, and never touches the truth.

Short dialogues (25 s) keep this fast; the accuracy harness runs the 3-minute ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media.alliance.engine import ROLES, Role
from tests.fixtures.dialogues import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    VOICES,
    generate_dialogue,
    have_tools,
    read_wav,
    synthetic_voice,
    to_int16,
)
from tests.fixtures.rooms import (
    BACKGROUND_VOICES,
    CONDITIONS,
    RECORDED_RANGE_DB,
    RoomCondition,
    generate_room_dialogue,
    have_recordings,
    level_over_mask_db,
    opus_roundtrip,
    render_room_clean,
)

SECONDS = 25.0
SEED = 3

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and sox")


def _pcm(path: Path) -> np.ndarray:
    return read_wav(path)[0].astype(np.float64) / 32768.0


def _mask_from_runs(runs: list[list[int]], n_frames: int) -> np.ndarray:
    mask = np.zeros(n_frames, dtype=bool)
    for a, b in runs:
        mask[a:b] = True
    return mask


def _xc(x: np.ndarray, ref: np.ndarray, lag: int) -> float:
    return float(np.dot(x[lag:], ref[: ref.size - lag]))


def _lag_samples(x: np.ndarray, ref: np.ndarray, max_lag: int) -> int:
    """Lag (samples, ≥ 0) at which ``ref`` delayed best matches ``x`` (FFT cross-correlation)."""
    size = 1 << (x.size + ref.size).bit_length()
    xc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(ref, size)), size)
    return int(np.argmax(xc[: max_lag + 1]))


@pytest.mark.parametrize("name", [n for n in CONDITIONS if n != "real-voices"])
def test_degradations_never_change_truth(name: str, tmp_path: Path) -> None:
    clean = generate_dialogue(SEED, SECONDS, tmp_path / "clean")
    room = generate_room_dialogue(SEED, CONDITIONS[name], SECONDS, tmp_path / "room")
    for role in ROLES:
        assert np.array_equal(room.dialogue.masks[role], clean.masks[role])
    assert room.dialogue.truth == clean.truth
    assert room.dialogue.placements == clean.placements


def test_clean_condition_is_byte_identical_to_the_plain_dialogue(tmp_path: Path) -> None:
    clean = generate_dialogue(SEED, SECONDS, tmp_path / "clean")
    room = generate_room_dialogue(SEED, CONDITIONS["clean"], SECONDS, tmp_path / "room")
    for role in ROLES:
        assert clean.wav(role).read_bytes() == room.dialogue.wav(role).read_bytes()


@pytest.mark.parametrize(("level_db", "delay_ms"), [(-15.0, 40.0), (-30.0, 180.0)])
def test_echo_has_the_requested_delay_and_level(
    level_db: float, delay_ms: float, tmp_path: Path
) -> None:
    condition = RoomCondition(
        "echo-test", echo_db=level_db, echo_delay_ms=(delay_ms, delay_ms), echo_wander_db=0.0
    )
    base = generate_dialogue(SEED, SECONDS, tmp_path / "clean")
    room = generate_room_dialogue(SEED, condition, SECONDS, tmp_path / "room")
    speech = render_room_clean(SEED, SECONDS, condition)
    for role in ROLES:
        far = Role.CLIENT if role is Role.THERAPIST else Role.THERAPIST
        leak = _pcm(room.dialogue.wav(role)) - _pcm(base.wav(role))
        lag = _lag_samples(leak, speech.speech[far], SAMPLE_RATE // 2)
        assert abs(lag - delay_ms * SAMPLE_RATE / 1000) <= 2
        if level_db >= -20:
            # On the *full* microphone track too: a strong leak is findable under the voice.
            mic = _pcm(room.dialogue.wav(role))
            assert abs(_lag_samples(mic, speech.speech[far], SAMPLE_RATE // 2) - lag) <= 2
        shift = round(delay_ms / 20)
        far_mask = np.concatenate([np.zeros(shift, bool), speech.masks[far][:-shift]])
        measured = level_over_mask_db(leak, far_mask)
        speaker = speech.scenario.levels_dbfs[str(role)]
        assert abs(measured - speaker - level_db) <= 1.0, (measured, speaker)
        assert room.applied[str(role)]["echo"]["delay_ms"] == pytest.approx(delay_ms, abs=0.05)


def test_background_speech_level_and_presence(tmp_path: Path) -> None:
    condition = RoomCondition("bg-test", background_db=-20.0)
    base = generate_dialogue(SEED, SECONDS, tmp_path / "clean")
    room = generate_room_dialogue(SEED, condition, SECONDS, tmp_path / "room")
    silence = ~base.masks[Role.THERAPIST] & ~base.masks[Role.CLIENT]
    for role in ROLES:
        info = room.applied[str(role)]["background"]
        added = _pcm(room.dialogue.wav(role)) - _pcm(base.wav(role))
        mask = _mask_from_runs(info["speech_runs"], silence.size)
        speaker = room.applied[str(role)]["speaker_dbfs"]
        assert abs(level_over_mask_db(added, mask) - speaker + 20.0) <= 1.0
        assert mask.mean() >= 0.5, "background speech should be on for long stretches"
        assert (mask & silence).sum() >= 0.3 * silence.sum(), "…including during silences"


def test_background_voices_are_not_the_participants(tmp_path: Path) -> None:
    room = generate_room_dialogue(SEED, CONDITIONS["background-15"], SECONDS, tmp_path)
    assert set(room.dialogue.scenario.voices.values()).isdisjoint(BACKGROUND_VOICES)
    assert set(BACKGROUND_VOICES).isdisjoint(VOICES)


def test_opus_is_aligned_and_loses_about_the_requested_fraction() -> None:
    rng = np.random.default_rng(0)
    pcm = to_int16(synthetic_voice(10.0, -20.0))
    out, stats = opus_roundtrip(pcm, 24.0, 0.0, rng)
    assert out.size == pcm.size and stats["lost"] == 0
    x, ref = out.astype(np.float64), pcm.astype(np.float64)
    late = _lag_samples(x, ref, 2000)
    early = _lag_samples(ref, x, 2000)
    lag = late if _xc(x, ref, late) >= _xc(ref, x, early) else -early
    # The declared pre-skip (312) is removed; libopus's waveform delay measures 306, so
    # the output is 6 samples (0.13 ms) early: far inside a 20 ms frame.
    assert abs(lag) <= 12, f"decoded Opus is {lag} samples late"
    concealed, lossy = opus_roundtrip(pcm, 24.0, 0.08, np.random.default_rng(1))
    assert lossy["packets"] >= 500
    assert 0.05 <= lossy["lost_fraction"] <= 0.11
    silent, same = opus_roundtrip(pcm, 24.0, 0.08, np.random.default_rng(1), "silence")
    assert same["lost"] == lossy["lost"]
    # Silence concealment leaves exact-zero 20 ms holes; libopus's PLC fills them.
    assert np.sum(silent == 0) >= 0.8 * 960 * lossy["lost"]
    assert np.sum(concealed == 0) < 0.2 * 960 * lossy["lost"]


def test_opus_condition_reports_loss_per_track(tmp_path: Path) -> None:
    room = generate_room_dialogue(SEED, CONDITIONS["opus24-loss5"], SECONDS, tmp_path)
    lost = [room.applied[str(r)]["opus"]["lost_fraction"] for r in ROLES]
    assert all(0.02 <= f <= 0.09 for f in lost), lost
    for role in ROLES:
        pcm = _pcm(room.dialogue.wav(role))
        assert pcm.size == round(SECONDS * SAMPLE_RATE)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    condition = CONDITIONS["combined"]
    a = generate_room_dialogue(SEED, condition, SECONDS, tmp_path / "a")
    b = generate_room_dialogue(SEED, condition, SECONDS, tmp_path / "b")
    c = generate_room_dialogue(SEED + 1, condition, SECONDS, tmp_path / "c")
    for role in ROLES:
        assert a.dialogue.wav(role).read_bytes() == b.dialogue.wav(role).read_bytes()
        assert a.dialogue.wav(role).read_bytes() != c.dialogue.wav(role).read_bytes()
    assert a.applied == b.applied


def test_drift_lowers_own_voice_only_for_the_stretch(tmp_path: Path) -> None:
    condition = RoomCondition("drift-test", drift_db=-12.0, drift_s=8.0)
    base = generate_dialogue(SEED, SECONDS, tmp_path / "clean")
    room = generate_room_dialogue(SEED, condition, SECONDS, tmp_path / "room")
    clean = render_room_clean(SEED, SECONDS, condition)
    checked = 0
    for role in ROLES:
        start = room.applied[str(role)]["drift"]["start_s"]
        ramp = 2.0  # min(4 s, drift_s / 4)
        low = slice(round((start + ramp) * SAMPLE_RATE), round((start + ramp + 8) * SAMPLE_RATE))
        before, after = _pcm(base.wav(role)), _pcm(room.dialogue.wav(role))
        own = clean.speech[role]
        # after − before = (gain − 1) · own voice: the noise and everything else is untouched.
        scaled = (after - before + own)[low]
        if np.sum(own[low] ** 2) < 1e-3 * np.sum(own**2):
            continue  # this speaker hardly talks in the low stretch
        checked += 1
        ratio_db = 10 * np.log10(np.sum(scaled**2) / np.sum(own[low] ** 2))
        assert ratio_db == pytest.approx(-12.0, abs=0.5)
        head = round(start * SAMPLE_RATE)
        assert np.array_equal(after[:head], before[:head])
    assert checked


def test_real_voices_use_recordings_with_truth_from_the_clean_recording(tmp_path: Path) -> None:
    assert have_recordings(), (
        "recorded speech missing: apt-get install asterisk-core-sounds-en-wav "
        "pocketsphinx-testdata (./dev.sh test does)"
    )
    plain = RoomCondition("rv", real_voices="both")
    noisy = RoomCondition("rv-noisy", real_voices="both", echo_db=-20.0, fan_db=-30.0)
    a = generate_room_dialogue(SEED, plain, SECONDS, tmp_path / "a")
    b = generate_room_dialogue(SEED, noisy, SECONDS, tmp_path / "b")
    assert all(p.voice.startswith("rec:") for p in a.dialogue.placements)
    assert a.dialogue.truth == b.dialogue.truth
    speech = render_room_clean(SEED, SECONDS, plain)
    for role in ROLES:
        assert np.array_equal(a.dialogue.masks[role], b.dialogue.masks[role])
        mask = a.dialogue.masks[role]
        assert 0.05 < mask.mean() < 0.9
        # Truth frames are the loud part of the placed recording, never its noise floor.
        x = speech.speech[role]
        frames = x[: mask.size * FRAME_SAMPLES].reshape(mask.size, FRAME_SAMPLES)
        db = 10 * np.log10(np.maximum(np.mean(frames**2, axis=1), 1e-20))
        assert db[mask].min() > db.max() - RECORDED_RANGE_DB - 12


def _recording(parts: list[tuple[str, float, float, float]]) -> np.ndarray:
    """A synthetic 'recording': (kind, seconds, frequency Hz, level dB re the voice) parts;
    "voice" is a harmonic series on the frequency (a voiced sound), "rumble" one sine."""
    rng = np.random.default_rng(7)
    out = []
    for kind, seconds, hz, level_db in parts:
        t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        if kind == "voice":
            x = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 30) if hz * k < 4000)
        else:
            x = np.sin(2 * np.pi * hz * t)
        x = np.asarray(x) / np.sqrt(np.mean(np.asarray(x) ** 2)) * 10 ** (level_db / 20)
        out.append(x + 1e-4 * rng.standard_normal(t.size))
    audio: np.ndarray = np.concatenate(out)
    peak = float(np.abs(audio).max())
    return np.asarray(audio / peak, dtype=np.float32)


def test_recorded_truth_counts_the_voice_not_the_rumble_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Some pocketsphinx recordings hold infrasonic rumble (breath on the microphone,
    10–30 Hz) 12–25 dB under their peak where the talker is silent: a voice has no energy
    there, so it is not a speech frame (design.md), and counted as one it bridged pauses the
    talker really made. A quiet, deep voice (70 Hz fundamental) stays speech."""
    import tests.fixtures.rooms as rooms

    #: kind, seconds, Hz, dB: loud voice, rumble alone, quiet deep voice, loud voice.
    parts = [
        ("voice", 0.6, 120.0, 0.0),
        ("rumble", 0.4, 20.0, -12.0),
        ("voice", 0.3, 70.0, -22.0),
        ("voice", 0.6, 150.0, 0.0),
    ]
    line = _recording(parts)
    backchannel = _recording([("voice", 0.5, 130.0, 0.0)])
    files = {"/rec/line.wav": line, "/rec/bc.wav": backchannel}
    corpus = {"sphinx": tuple((p, a.size / SAMPLE_RATE) for p, a in files.items())}
    monkeypatch.setattr(rooms, "recorded_corpora", lambda: corpus)
    monkeypatch.setattr(rooms, "load_recording", lambda path: files[path])
    clean = render_room_clean(SEED, 60.0, RoomCondition("rv", real_voices="both"))
    bounds = np.cumsum([0.0] + [p[1] for p in parts])
    checked = 0
    for p in clean.placements:
        if p.text != "/rec/line.wav":
            continue
        others = [
            q
            for q in clean.placements
            if q.role == p.role
            and q is not p
            and q.start_s < p.start_s + line.size / SAMPLE_RATE
            and q.start_s + q.duration_s > p.start_s
        ]
        if others:
            continue
        mask = clean.masks[Role(p.role)]
        for (kind, _, hz, _), a, b in zip(parts, bounds[:-1], bounds[1:], strict=True):
            # Inner frames of each part (a frame either side may straddle two parts).
            first = int((p.start_s + a) * SAMPLE_RATE) // FRAME_SAMPLES + 2
            last = int((p.start_s + b) * SAMPLE_RATE) // FRAME_SAMPLES - 1
            heard = mask[first:last]
            if kind == "rumble":
                assert not heard.any(), f"{heard.sum()} frames of {hz:.0f} Hz rumble are truth"
            else:
                assert heard.all(), f"{(~heard).sum()} frames of a {hz:.0f} Hz voice are not"
        checked += 1
    assert checked >= 2

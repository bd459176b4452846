"""Offline analysis of recordings: any rate or channel count gives the live path's numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from media.alliance.engine import Role, Snapshot
from media.alliance.offline import analyze_files, analyze_pcm, decode_mono_48k
from media.alliance.payload import snapshot_from_json, snapshot_json
from tests.fixtures.dialogues import (
    SAMPLE_RATE,
    Dialogue,
    generate_dialogue,
    read_wav,
    write_wav,
)


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> Dialogue:
    # Seed 7: pink noise and a quiet (-35 dBFS) therapist, the hardest case for resampling.
    return generate_dialogue(7, 45.0, tmp_path_factory.mktemp("offline"))


@pytest.fixture(scope="module")
def at_48k(dialogue: Dialogue) -> Snapshot:
    return analyze_files(dialogue.therapist_wav, dialogue.client_wav)


def _convert(src: Path, dst: Path, rate: int, channels: int) -> Path:
    subprocess.run(
        ["sox", str(src), "-b", "16", str(dst), "channels", str(channels), "rate", str(rate)],
        check=True,
        capture_output=True,
    )
    return dst


def _close(a: Snapshot, b: Snapshot) -> None:
    assert a.duration_s == pytest.approx(b.duration_s, abs=0.04)
    assert a.therapist_talk_s == pytest.approx(b.therapist_talk_s, rel=0.03, abs=0.2)
    assert a.client_talk_s == pytest.approx(b.client_talk_s, rel=0.03, abs=0.2)
    assert a.silence_s == pytest.approx(b.silence_s, rel=0.05, abs=0.5)
    assert a.overlap_s == pytest.approx(b.overlap_s, abs=0.5)
    assert abs(a.turns - b.turns) <= 1
    assert a.long_silences == b.long_silences


def test_48k_result_matches_the_truth_roughly(dialogue: Dialogue, at_48k: Snapshot) -> None:
    truth = dialogue.truth
    assert at_48k.duration_s == pytest.approx(truth.duration_s, abs=0.02)
    assert at_48k.client_share == pytest.approx(truth.client_share, abs=0.03)
    assert at_48k.turns == pytest.approx(truth.turns, abs=1)


@pytest.mark.parametrize(("rate", "channels"), [(16000, 2), (44100, 1), (8000, 1)])
def test_other_formats_give_the_same_result(
    dialogue: Dialogue, at_48k: Snapshot, tmp_path: Path, rate: int, channels: int
) -> None:
    t = _convert(dialogue.therapist_wav, tmp_path / f"t-{rate}-{channels}.wav", rate, channels)
    c = _convert(dialogue.client_wav, tmp_path / f"c-{rate}-{channels}.wav", rate, channels)
    assert read_wav(t)[1] == rate
    _close(analyze_files(t, c), at_48k)


def test_decode_resamples_and_downmixes(tmp_path: Path) -> None:
    left = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 300) * 8000).astype(np.int16)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = tmp_path / "stereo16k.wav"
    write_wav(path, stereo, 16000)
    pcm = decode_mono_48k(path)
    assert pcm.dtype == np.int16
    assert abs(pcm.size - SAMPLE_RATE) <= 64
    # Channels are averaged: half the left channel's amplitude.
    assert np.abs(pcm[1000:-1000]).max() == pytest.approx(4000, rel=0.05)


def test_shorter_recording_counts_as_absent(dialogue: Dialogue, tmp_path: Path) -> None:
    pcm, _ = read_wav(dialogue.client_wav)
    short = tmp_path / "client-short.wav"
    write_wav(short, pcm[: 30 * SAMPLE_RATE])
    snap = analyze_files(dialogue.therapist_wav, short)
    assert snap.duration_s == pytest.approx(45.0, abs=0.02)
    assert snap.absent_s == pytest.approx(15.0, abs=0.02)


def test_result_serialises_for_the_cli(at_48k: Snapshot) -> None:
    data = json.loads(json.dumps(snapshot_json(at_48k), indent=2))
    assert data["speaking"] == []
    assert snapshot_json(snapshot_from_json(data)) == data


def test_analyze_pcm_handles_silent_tracks() -> None:
    zeros = np.zeros(2 * SAMPLE_RATE, dtype=np.int16)
    snap = analyze_pcm({Role.THERAPIST: zeros, Role.CLIENT: zeros})
    assert snap.silence_s == pytest.approx(2.0)
    assert snap.therapist_talk_s == 0 and snap.client_share is None


def test_rapport_analyze_prints_the_snapshot_as_json(dialogue: Dialogue, at_48k: Snapshot) -> None:
    import json
    import subprocess
    import sys

    from media.alliance.engine import Role

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "analyze",
            str(dialogue.wav(Role.THERAPIST)),
            str(dialogue.wav(Role.CLIENT)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == snapshot_json(at_48k)  # the command is the same engine, nothing more


def test_offline_uses_the_session_clock_of_the_live_path() -> None:
    """Talk on the longer recording after the other one ended is absence, not talk: the
    offline analyser runs the same session clock as a live call (one code path)."""
    from media.alliance.offline import analyze_pcm
    from tests.fixtures.dialogues import synthetic_voice

    speech = np.round(synthetic_voice(6.0, -20.0, seed=3) * 32767).astype(np.int16)
    rng = np.random.default_rng(4)
    quiet = np.round(rng.normal(0, 3, 48000 * 3)).astype(np.int16)  # 3 s of a quiet room
    snap = analyze_pcm({Role.THERAPIST: speech, Role.CLIENT: quiet})
    assert snap.absent_s == pytest.approx(3.0, abs=0.05)
    assert snap.therapist_talk_s <= 3.0 + 0.05  # the last 3 s of talk are not counted
    assert snap.therapist_talk_s > 2.0

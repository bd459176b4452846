"""The speaking-latency benchmark runs, bounded, and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from media.alliance.vad import VoiceActivityDetector
from server.bench.synthetic import voiced_speech


def test_synthetic_voice_is_speech_after_silence() -> None:
    audio = np.concatenate([np.zeros(48_000, dtype=np.int16), voiced_speech(2.0)])
    vad = VoiceActivityDetector()
    decisions = [vad.is_speech(audio[i : i + 960]) for i in range(0, audio.size - 959, 960)]
    assert not any(decisions[:50])
    assert sum(decisions[50:]) >= 0.9 * len(decisions[50:])


def test_bench_signals_reports_latency(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            *[sys.executable, "-m", "server.cli", "bench-signals", "--onsets", "2"],
            *["--json", str(out), "--media-workers", "1"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["onsets"] == figures["detected"] == 2
    assert figures["media_workers"] == 1  # measured through a media worker process
    latency = figures["speaking_latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["max"]
    assert "p50" in result.stdout
    # The signals' CPU per session is measured, not asserted against a budget: plausible
    # means positive, below a whole core, and within what the whole thread used.
    cpu = figures["signals_cpu"]
    assert cpu["session_s"] > 1.0
    assert 0 < cpu["per_session_cpu_s_per_s"] < 1.0
    assert cpu["session_cpu_s"] > 0
    assert 0 < cpu["thread_cpu_s_per_s"] < 1.0
    assert "CPU s/s" in result.stdout

"""``rapport bench`` end to end, briefly: the JSON contract, not the speed.

One session per relay mode for 4 s each, against real server subprocesses on 127.0.0.1.
Figures from a run this short on a shared machine mean little; the test only checks that
every figure is produced and sane, and that each mode really ran as that mode.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from server.bench.loadgen import (
    AUDIO_LOOP_FRAMES,
    AUDIO_TICKS,
    VIDEO_ANCHOR_EVERY,
    VIDEO_ANCHOR_SKIP,
    VIDEO_TICKS,
    match_stream,
)
from server.bench.relay import summarise
from server.bench.stats import percentile

REPO_ROOT = Path(__file__).resolve().parent.parent


def _number(value: object) -> float:
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    assert math.isfinite(value), value
    return float(value)


@pytest.mark.timeout(400)
def test_bench_compare_writes_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "bench",
            "--sessions",
            "1",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--compare",
            "--media-workers",
            "2",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "transcode / forward" in result.stdout  # the printed table and ratio
    data = json.loads(out.read_text())
    assert _number(data["cpu_ratio"]) > 0
    for mode in ("forward", "transcode"):
        run = data[mode]
        context = json.dumps(run, indent=1)
        assert run["mode"] == mode and run["sessions"] == 1 and run["sessions_started"] == 1
        assert _number(run["server_cpu_per_session"]) > 0
        assert _number(run["sessions_per_core"]) > 0
        latency = run["added_latency_ms"]
        assert set(latency) == {"audio_p50", "audio_p95", "video_p50", "video_p95"}
        for value in latency.values():
            assert value is not None, context
            assert _number(value) >= 0
        assert 0 <= _number(run["frame_loss"]) <= 1
        assert _number(run["loop_lag_p99_ms"]) >= 0
        # The server really relayed in this mode, both directions, in its worker processes
        # (whose CPU and event loops the figures include).
        assert run["relay_directions"][mode] == 2, run["relay_directions"]
        assert run["media_workers"] == 2


def test_summary_of_load_generator_results() -> None:
    """The arithmetic of the report, on made-up load generator output."""
    part = {
        "latencies_ms": [1.0, 2.0, 3.0, 4.0],
        "sent": 100,
        "received": 99,
        "streams_unmatched": 0,
    }
    direct = {
        "latencies_ms": [0.5, 0.5, 1.0, 1.0],
        "sent": 50,
        "received": 50,
        "streams_unmatched": 0,
    }
    results = [
        {"relay": {"audio": part, "video": part}, "direct": {"audio": direct, "video": direct}}
    ]
    run = summarise(
        "forward",
        2,
        2,
        results,
        cpu=0.1,
        loadgen_cpu=0.2,
        rcvbuf=0,
        server_stats={"loop_lag_ms": {"p99": 1.5, "max": 3.0}, "relay_directions": {"forward": 4}},
        load=0.1,
    )
    assert run["server_cpu_per_session"] == pytest.approx(0.05)
    assert run["sessions_per_core"] == pytest.approx(20.0)
    assert run["added_latency_ms"]["audio_p50"] == pytest.approx(2.5 - 0.75)
    assert run["frame_loss"] == pytest.approx(0.01)
    assert run["meets_target"] is False  # 1 % loss is not under 1 %
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_load_generator_pairs_frames_through_an_unknown_offset() -> None:
    """Sender and receiver clocks agree; RTP times differ by an unknown offset (and ±1 tick,
    as aiortc's encoder rescales pts); some frames are lost: latencies still come out."""

    rng = random.Random(5)
    offset = 123_456_789
    # Video: 10 s at 30 fps, the last 3 of every 90 slots skipped, 4 ms latency, 2 % loss.
    sent = {
        slot * VIDEO_TICKS: 100.0 + slot / 30
        for slot in range(300)
        if slot % VIDEO_ANCHOR_EVERY < VIDEO_ANCHOR_EVERY - VIDEO_ANCHOR_SKIP
    }
    received = [
        (at + 0.004, pts + offset + rng.choice((-1, 0, 1)), float("nan"))
        for pts, at in sent.items()
        if rng.random() > 0.02
    ]
    result = match_stream("video", sent, received, (101.0, 109.0))
    assert result.offset_found
    assert all(abs(x - 4.0) < 0.01 for x in result.latencies_ms)
    assert 0.9 < result.received / result.sent <= 1.0
    # Audio: the level pattern of the clip repeats every loop; 85 ms latency (transcoding).
    levels = [-90.0 if i % 7 in (0, 1) else -30.0 + (i * 37 % 11) for i in range(AUDIO_LOOP_FRAMES)]
    levels[0] = -5.0  # the click
    sent_audio = {slot * AUDIO_TICKS: 100.0 + slot * 0.02 for slot in range(500)}
    received_audio = [
        (
            at + 0.085,
            pts + offset,
            levels[(pts // AUDIO_TICKS) % AUDIO_LOOP_FRAMES] + rng.uniform(-1, 1),
        )
        for pts, at in sent_audio.items()
    ]
    result = match_stream("audio", sent_audio, received_audio, (101.0, 109.0), levels)
    assert result.offset_found and result.received == result.sent
    assert all(abs(x - 85.0) < 0.01 for x in result.latencies_ms)

"""aiortc's internals are touched only where media runs, and only forwarding depends on them.

Each test runs in a fresh interpreter: what matters is what a process looks like after its
imports (patched or not, compat loaded or not), which an already-warm test process cannot
show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(script: str, timeout: float = 120) -> dict[str, object]:
    """Run ``script`` in a fresh interpreter; it prints one JSON object as its last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


IMPORT_SERVER = """
import json, sys
from aiortc import clock, rate

originals = {
    "clock.current_ms": clock.current_ms,
    "clock.current_ntp_time": clock.current_ntp_time,
    "rate.RateCounter": rate.RateCounter,
    "rate.RateCounter.add": rate.RateCounter.add,
    "rate.RateCounter.rate": rate.RateCounter.rate,
    "rate.OveruseEstimator.update_min_frame_period": rate.OveruseEstimator.update_min_frame_period,
    "rate.RemoteBitrateEstimator.add": rate.RemoteBitrateEstimator.add,
}
import server.app  # noqa: E402
import media.relay.call, media.workers.pool  # what the server reaches for its calls

now = {
    "clock.current_ms": clock.current_ms,
    "clock.current_ntp_time": clock.current_ntp_time,
    "rate.RateCounter": rate.RateCounter,
    "rate.RateCounter.add": rate.RateCounter.add,
    "rate.RateCounter.rate": rate.RateCounter.rate,
    "rate.OveruseEstimator.update_min_frame_period": rate.OveruseEstimator.update_min_frame_period,
    "rate.RemoteBitrateEstimator.add": rate.RemoteBitrateEstimator.add,
}
print(json.dumps({
    "patched": sorted(k for k in originals if now[k] is not originals[k]),
    "compat_modules": sorted(m for m in sys.modules if m.startswith("media.aiortc_compat")),
}))
"""


def test_importing_the_server_patches_no_aiortc_function_and_loads_no_compat() -> None:
    """A server whose calls run in workers keeps aiortc as shipped: nothing patched on import."""
    out = _python(IMPORT_SERVER)
    assert out["patched"] == []
    assert out["compat_modules"] == []


MISMATCHED_CALL = """
import asyncio, json, sys
import aiortc
from aiortc import rate

BREAK = sys.argv[1]
if BREAK == "version":
    aiortc.__version__ = "0.0"  # before anything could have checked it
else:
    rate.MIN_FRAME_PERIOD_HISTORY_LENGTH = 61  # an internal the checks pin

import numpy as np  # noqa: E402
from aiortc import clock  # noqa: E402

from media.relay.call import Call  # noqa: E402
from media.relay.ice import MediaConfig  # noqa: E402
from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack  # noqa: E402

original_clock = clock.current_ms


def rms(frame):
    return float(np.sqrt(np.mean(frame.to_ndarray().astype(np.float64) ** 2)))


async def join(call, role, peer):
    await peer.accept(await call.connect(role, await peer.offer()))


async def main():
    config = dict(allow_loopback_candidates=True, media_addresses=("127.0.0.1",))
    tapped = {"therapist": 0, "client": 0}

    def on_audio(role, frame):
        tapped[role] += 1

    call = Call(MediaConfig(relay_mode="transcode", **config), on_audio=on_audio)
    therapist = FakeBrowser(ToneTrack(440), ColorTrack((220, 30, 30)))
    client = FakeBrowser(ToneTrack(660), ColorTrack((30, 30, 220)))
    try:
        await join(call, "therapist", therapist)
        await join(call, "client", client)
        await therapist.wait_for("audio", 50, timeout=30)
        await client.wait_for("audio", 50, timeout=30)
        await client.wait_for("video", 5, timeout=30)
        audio = [
            max(rms(f) for f in peer.received["audio"][-20:]) for peer in (therapist, client)
        ]
        relay_mode = dict(call.relay_mode)
        connected = [call.media_state(r) for r in ("therapist", "client")]
    finally:
        await therapist.close()
        await client.close()
        await call.close()
    try:
        Call(MediaConfig(**config))
        forward_error = None
    except ImportError as exc:
        forward_error = [type(exc).__name__, str(exc)]
    print(json.dumps({
        "audio_rms": audio,
        "tapped": tapped,
        "relay_mode": relay_mode,
        "states": connected,
        "forward_error": forward_error,
        "clock_patched": clock.current_ms is not original_clock,
    }))


asyncio.run(main())
"""


@pytest.mark.parametrize("broken", ["version", "internal"])
def test_transcoding_call_survives_a_mismatched_aiortc_and_forwarding_refuses(
    broken: str,
) -> None:
    """The compat layer failing its checks stops forwarding, loudly, and nothing else."""
    out = _python(MISMATCHED_CALL.replace("sys.argv[1]", repr(broken)))
    audio_rms = out["audio_rms"]
    assert isinstance(audio_rms, list) and min(audio_rms) > 1000, out  # tones carried both ways
    tapped = out["tapped"]
    assert isinstance(tapped, dict) and min(tapped.values()) > 20, out
    assert out["relay_mode"] == {"therapist->client": "transcode", "client->therapist": "transcode"}
    assert out["states"] == ["connected", "connected"]
    assert out["clock_patched"] is False  # the speed patches stood down too
    error = out["forward_error"]
    assert isinstance(error, list), out
    name, message = error
    assert name == "ForwardingUnavailable"
    assert "forwarding relay cannot run on this aiortc" in message
    assert "RAPPORT_RELAY_MODE=transcode" in message
    if broken == "version":
        assert "aiortc 0.0 is installed" in message
    else:
        assert "OveruseEstimator.update_min_frame_period changed" in message


# Spellings of aiortc's private internals that Rapport uses; none may appear outside
# media/aiortc_compat (server/bench is tooling and goes through the compat package too).
PRIVATE = (
    "_RTCRtpReceiver__",
    "_RTCRtpSender__",
    "._codecs",
    "._send_keyframe",
    "._handle_rtcp_packet",
    "._send_rtcp",
    "aiortc.clock",
    "aiortc.rate",
    "aiortc import clock",
    "aiortc import rate",
    "JitterBuffer(",
)


def test_aiortc_internals_are_touched_only_in_the_compat_package() -> None:
    for package in ("media", "server", "signaling"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("media", "aiortc_compat"):
                continue
            text = path.read_text()
            found = [name for name in PRIVATE if name in text]
            assert not found, f"{rel} touches aiortc internals {found}"


def test_relay_imports_the_compat_package_only_inside_functions() -> None:
    """A module-level import would load the hooks (and their check) into every relay."""
    import ast

    for path in sorted((ROOT / "media").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("media", "aiortc_compat"):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.If):  # TYPE_CHECKING blocks import for annotations only
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any("aiortc_compat" in n for n in names), rel  # relative ones too

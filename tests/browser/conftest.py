"""Fixtures for real-browser tests: the Rapport server as a subprocess, speech WAVs for the fake
microphones (a different script per role), and Debian chromium driven by Playwright's sync API.

Everything binds 127.0.0.1; nothing reaches outside this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pluggy import Result

from tests.server_process import REPO_ROOT, RapportServer, rapport_server_process

ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("RAPPORT_CHROMIUM", "/usr/bin/chromium")

_current_server: RapportServer | None = None


@contextlib.contextmanager
def serve_rapport(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[RapportServer]:
    """A Rapport server subprocess (tests/server_process.py) whose log a failing browser test
    shows; ``extra_env`` adds ``RAPPORT_*`` settings."""
    global _current_server
    with rapport_server_process(tmp, extra_env) as server:
        previous, _current_server = _current_server, server
        try:
            yield server
        finally:
            _current_server = previous


@pytest.fixture(scope="session")
def rapport_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RapportServer]:
    # One server for the whole browser run: its tests sign the same therapist in, from one
    # address, dozens of times within minutes, which the default sign-in throttle (10 per
    # account per 10 minutes) rightly refuses. The throttle has its own tests against a
    # server of their own (tests/test_security_login.py); here it would only make a test's
    # outcome depend on how many tests ran before it.
    generous = {
        "RAPPORT_LOGIN_ATTEMPTS_PER_ACCOUNT": "1000 per 10 minutes",
        "RAPPORT_LOGIN_ATTEMPTS_PER_ADDRESS": "1000 per minute",
    }
    with serve_rapport(tmp_path_factory.mktemp("rapport-server"), generous) as server:
        yield server


# Each role's fake microphone loops its own 20 s script, four 5 s slots of one utterance each:
# the therapist speaks briefly (~30 %), the client at length (~60 %). Speech is spread evenly
# through the loop so any stretch of the call holds about the same share of it.
SLOT_S = 5.0
THERAPIST_LINES = (
    ("en-us", "How did that feel?"),
    ("en-us", "Tell me more about that."),
    ("en-us", "What happened next?"),
    ("en-us", "That sounds hard."),
)
CLIENT_LINES = (
    ("en+f3", "I was worried about it for most of the week, honestly."),
    ("en+f3", "My sister called and we talked for a really long time."),
    ("en+f3", "I think I handled the meeting a little better than before."),
    ("en+f3", "Sometimes I just do not know what to say to people."),
)


@dataclass
class DialogueWavs:
    therapist: Path
    client: Path
    loop_s: float
    # Ground truth from the same engine run offline on the clean files (media.alliance.offline):
    # seconds of talk per second of audio, for each role, with the files looping.
    therapist_rate: float
    client_rate: float


def _script_wav(tmp: Path, name: str, lines: tuple[tuple[str, str], ...]) -> Path:
    slots = []
    for i, (voice, text) in enumerate(lines):
        raw = tmp / f"{name}-{i}-raw.wav"
        slot = tmp / f"{name}-{i}.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", "150", "-a", "160", "-w", str(raw), text],
            check=True,
            capture_output=True,
            timeout=30,
        )
        # 48 kHz mono s16, normalised, a breath before the words, silence to fill the slot.
        subprocess.run(
            [
                "sox",
                str(raw),
                "-r",
                "48000",
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                str(slot),
                "norm",
                "-3",
                "pad",
                "0.3",
                str(SLOT_S),
                "trim",
                "0",
                str(SLOT_S),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        slots.append(str(slot))
    out = tmp / f"{name}.wav"
    subprocess.run(["sox", *slots, str(out)], check=True, capture_output=True, timeout=30)
    return out


@pytest.fixture(scope="session")
def dialogue_wavs(tmp_path_factory: pytest.TempPathFactory) -> DialogueWavs:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: ./dev.sh test installs it")
    import numpy as np

    from media.alliance.engine import Role
    from media.alliance.offline import analyze_pcm, decode_mono_48k

    tmp = tmp_path_factory.mktemp("dialogue")
    therapist = _script_wav(tmp, "therapist", THERAPIST_LINES)
    client = _script_wav(tmp, "client", CLIENT_LINES)
    loops = 4
    pcm = {Role.THERAPIST: decode_mono_48k(therapist), Role.CLIENT: decode_mono_48k(client)}
    loop_s = pcm[Role.THERAPIST].size / 48000
    snap = analyze_pcm({role: np.tile(x, loops) for role, x in pcm.items()})
    total = loop_s * loops
    return DialogueWavs(
        therapist=therapist,
        client=client,
        loop_s=loop_s,
        therapist_rate=snap.therapist_talk_s / total,
        client_rate=snap.client_talk_s / total,
    )


def chromium_args(fake_audio: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_audio}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
    ]


@dataclass
class Browsers:
    therapist: object
    client: object


@contextlib.contextmanager
def browser_pair(pw: Any, therapist_mic: Path, client_mic: Path) -> Iterator[Browsers]:
    """Two chromium processes, each with its own WAV as the fake microphone (the flag is per
    process, and separate processes also keep the two identities apart)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: ./dev.sh test installs it")
    therapist = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(therapist_mic))
    client = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(client_mic))
    try:
        yield Browsers(therapist=therapist, client=client)
    finally:
        for browser in (therapist, client):
            with contextlib.suppress(Exception):
                browser.close()


@pytest.fixture(scope="session")
def browsers(pw: Any, dialogue_wavs: DialogueWavs) -> Iterator[Browsers]:
    with browser_pair(pw, dialogue_wavs.therapist, dialogue_wavs.client) as pair:
        yield pair


@pytest.fixture
def console_log(request: pytest.FixtureRequest) -> list[str]:
    """Lines from the pages' consoles; attached to the report when a test fails."""
    lines: list[str] = []
    request.node.stash[_console_key] = lines
    return lines


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


_console_key = pytest.StashKey[list[str]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("browser") is not None:
        stashed: list[str] = item.stash.get(_console_key, [])
        lines = list(stashed)
        # Module-scoped fixtures (a shared call) keep their pages' console in `console_lines`.
        for value in getattr(item, "funcargs", {}).values():
            lines.extend(getattr(value, "console_lines", None) or [])
        if lines:
            report.sections.append(("browser console", "\n".join(lines[-300:])))
        if _current_server is not None:
            report.sections.append(("rapport server log", _current_server.log_tail()))

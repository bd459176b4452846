"""Fixtures for real-browser tests: the Rapport server as a subprocess, speech WAVs for the fake
microphones (a different script per role), and Debian chromium driven by Playwright's sync API.

Everything binds 127.0.0.1; nothing reaches outside this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pluggy import Result

from tests.support import eventually_sync

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
CHROMIUM = os.environ.get("RAPPORT_CHROMIUM", "/usr/bin/chromium")

THERAPIST_EMAIL = "therapist@example.test"
THERAPIST_PASSWORD = "quiet-harbour-2417"
ADMIN_EMAIL = "admin@example.test"
ADMIN_PASSWORD = "steady-lantern-9035"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RapportServer:
    base_url: str
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, tuple[str, str]] = field(default_factory=dict)

    def start(self) -> None:
        """Start `rapport serve` on this port and database; return once /healthz answers."""
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def healthy() -> bool:
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited with {proc.returncode} before it was ready:\n{self.log_tail()}"
                )
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually_sync(
            healthy,
            timeout=60,
            interval=0.2,
            message=lambda: f"server not healthy:\n{self.log_tail()}",
        )

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs, sockets just die."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, max_chars: int = 20_000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return text[-max_chars:]

    def cli(
        self, *args: str, stdin: str = "", timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "server.cli", *args],
            input=stdin,
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


_current_server: RapportServer | None = None


@pytest.fixture(scope="session")
def rapport_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RapportServer]:
    global _current_server
    tmp = tmp_path_factory.mktemp("rapport-server")
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'rapport.db'}",
        "RAPPORT_PUBLIC_URL": base_url,
        # JSON form: the server's Settings cannot parse the plain "127.0.0.1" form of a list
        # (pydantic-settings JSON-decodes list fields before the comma-splitting validator).
        "RAPPORT_MEDIA_ADDRESSES": '["127.0.0.1"]',
        "RAPPORT_ALLOW_LOOPBACK_CANDIDATES": "true",
        "RAPPORT_LOG_JSON": "false",
        "PYTHONUNBUFFERED": "1",
    }
    server = RapportServer(base_url=base_url, env=env, log_path=tmp / "server.log", port=port)
    _current_server = server
    try:
        server.start()
        for email, password, role, name in (
            (THERAPIST_EMAIL, THERAPIST_PASSWORD, "therapist", "Dr. Ellis Moreau"),
            (ADMIN_EMAIL, ADMIN_PASSWORD, "admin", "Sam Admin"),
        ):
            # Not a tty, so the CLI reads one line from stdin (a tty would prompt twice).
            result = server.cli(
                "user", "add", email, "--role", role, "--name", name, stdin=f"{password}\n"
            )
            if result.returncode != 0:
                pytest.fail(
                    f"`user add {email}` failed ({result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}"
                )
            server.users[role] = (email, password)
        yield server
    finally:
        _current_server = None
        server.stop()


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
            pytest.skip(f"{tool} is not installed")
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
def browser_pair(therapist_mic: Path, client_mic: Path) -> Iterator[Browsers]:
    """Two chromium processes, each with its own WAV as the fake microphone (the flag is per
    process, and separate processes also keep the two identities apart)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        therapist = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(therapist_mic))
        client = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(client_mic))
        try:
            yield Browsers(therapist=therapist, client=client)
        finally:
            for browser in (therapist, client):
                with contextlib.suppress(Exception):
                    browser.close()


@pytest.fixture(scope="session")
def browsers(dialogue_wavs: DialogueWavs) -> Iterator[Browsers]:
    with browser_pair(dialogue_wavs.therapist, dialogue_wavs.client) as pair:
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

"""A small WebDriver BiDi client for Debian's Firefox, which Playwright cannot drive.

Playwright drives only its own patched Firefox builds; Debian's ``firefox-esr`` speaks the
W3C WebDriver BiDi protocol (JSON commands and events over one WebSocket, opened with
``--remote-debugging-port``). The handful of commands a browser test needs (session.new,
browsingContext.navigate, script.evaluate, script.addPreloadScript,
input.performActions) fit in a synchronous client on ``websockets``, which keeps npm out of
the test command and works beside Playwright's sync API in the same thread.

Values cross as JSON strings (``JSON.stringify`` in the page), so BiDi's typed remote-value
encoding is needed only for element references (a click needs the element's ``sharedId``).

Firefox starts with a fresh profile whose preferences are Firefox's defaults except fake media
devices and everything that would reach the network on its own (updates, telemetry, safe
browsing, remote settings, captive portal and connectivity checks, add-on and plugin
downloads, DNS over HTTPS, prefetching). A release build ignores the remote-settings server
preference unless ``MOZ_DISABLE_NONLOCAL_CONNECTIONS=1`` is set, as Mozilla's own test
harnesses do; with it, the dummy server URL turns remote settings off (without it Firefox
asked for firefox.settings.services.mozilla.com 130 times in 25 s). All non-local HTTP goes
to a proxy on 127.0.0.1 that answers nothing and records what was asked of it
(``ProxySentinel``), so a test can assert that Firefox tried to reach nothing beyond this
machine. WebRTC preferences are left alone: host candidates stay hidden behind mDNS names, as
for any Firefox user.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

FIREFOX = os.environ.get("RAPPORT_FIREFOX", "/usr/bin/firefox-esr")

# What fake media needs, then what keeps a fresh profile off the network and out of the way.
FAKE_MEDIA_PREFS: dict[str, Any] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
}
QUIET_PREFS: dict[str, Any] = {
    # First run and default-browser noise.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.firstRunURL": "",
    "toolkit.startup.max_resumed_crashes": -1,
    "browser.sessionstore.resume_from_crash": False,
    # Updates of Firefox, add-ons, system add-ons, search engines and media plugins.
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.blocklist.enabled": False,
    "browser.search.update": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-manager.url": "http://127.0.0.1:9/",
    "media.gmp-gmpopenh264.autoupdate": False,
    # Telemetry, studies, crash reports.
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "http://127.0.0.1:9/",
    "toolkit.telemetry.archive.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "browser.crashReports.unsubmittedCheck.enabled": False,
    "browser.tabs.crashReporting.sendReport": False,
    # Safe browsing, remote settings, captive portal, connectivity and region probes.
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.google.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "captivedetect.canonicalURL": "",
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "geo.provider.network.url": "",
    "geo.enabled": False,
    # New tab page content, Pocket, accounts, sync.
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.section.topstories": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.feeds.telemetry": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.topsites.contile.enabled": False,
    "extensions.pocket.enabled": False,
    "identity.fxaccounts.enabled": False,
    "browser.ping-centre.telemetry": False,
    # Name resolution and speculative connections.
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "browser.places.speculativeConnect.enabled": False,
    "browser.urlbar.speculativeConnect.enabled": False,
    # Backstop: any HTTP(S) not to this machine goes to the sentinel proxy (its port is added
    # at launch). Firefox never proxies localhost (network.proxy.allow_hijacking_localhost is
    # false by default).
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.no_proxies_on": "",
}


class ProxySentinel:
    """A proxy on 127.0.0.1 that serves nothing and records the first line of each request
    ("CONNECT host:443 HTTP/1.1", "GET http://host/ HTTP/1.1"): Firefox's attempts to reach
    anything off this machine."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="proxy-sentinel", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0]
                except OSError:
                    first = b"(nothing read)"
                self.requests.append(first.decode("latin-1"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


class BiDiError(RuntimeError):
    """A BiDi command failed; the message names the command and Firefox's error."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_profile(profile: Path, prefs: dict[str, Any]) -> None:
    profile.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


class BiDi:
    """One WebDriver BiDi connection: commands answered in order, events kept for inspection."""

    def __init__(self, url: str) -> None:
        self._stack = contextlib.ExitStack()
        self._ws: ClientConnection = self._stack.enter_context(
            connect(url, max_size=None, open_timeout=10)
        )
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def command(self, method: str, params: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Send ``method`` and return its result; raise ``BiDiError`` on an error reply."""
        command_id = next(self._ids)
        self._ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BiDiError(f"{method}: no reply within {timeout} s")
            try:
                raw = self._ws.recv(timeout=left)
            except TimeoutError:
                continue
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") == "event":
                self.events.append(message)
                del self.events[:-500]  # bounded: only the recent ones help a failure report
                continue
            if message.get("id") != command_id:
                continue
            if message.get("type") == "error":
                raise BiDiError(
                    f"{method}: {message.get('error')}: {message.get('message')}".strip()
                )
            result: dict[str, Any] = message.get("result", {})
            return result

    def close(self) -> None:
        with contextlib.suppress(WebSocketException, OSError):
            self._stack.close()


@dataclass
class Tab:
    """A top-level browsing context of the BiDi session."""

    bidi: BiDi
    context: str

    def navigate(self, url: str, timeout: float = 30) -> None:
        self.bidi.command(
            "browsingContext.navigate",
            {"context": self.context, "url": url, "wait": "interactive"},
            timeout=timeout,
        )

    def call(self, function: str, *args: Any, timeout: float = 30) -> Any:
        """Run ``function(...args)`` in the page (awaiting a promise); return its JSON value."""
        expression = (
            f"(async () => JSON.stringify(await ({function})(...{json.dumps(list(args))})))()"
        )
        result = self.bidi.command(
            "script.evaluate",
            {
                "expression": expression,
                "target": {"context": self.context},
                "awaitPromise": True,
                "userActivation": False,
            },
            timeout=timeout,
        )
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BiDiError(f"script failed: {details.get('text', details)}")
        value = result.get("result", {})
        if value.get("type") != "string":
            return None  # JSON.stringify(undefined)
        return json.loads(value["value"])

    def click(self, selector: str) -> None:
        """Click the element as a user would (trusted events, which also grant user activation
        for autoplay), not with a scripted ``element.click()``."""
        result = self.bidi.command(
            "script.evaluate",
            {
                "expression": (
                    f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                    " e?.scrollIntoView({ block: 'center' }); return e; })()"
                ),
                "target": {"context": self.context},
                "awaitPromise": False,
            },
        )
        node = result.get("result", {})
        if node.get("type") != "node":
            raise BiDiError(f"click: no element matches {selector!r}")
        origin = {"type": "element", "element": {"sharedId": node["sharedId"]}}
        self.bidi.command(
            "input.performActions",
            {
                "context": self.context,
                "actions": [
                    {
                        "type": "pointer",
                        "id": "mouse",
                        "parameters": {"pointerType": "mouse"},
                        "actions": [
                            {"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
                            {"type": "pointerDown", "button": 0},
                            {"type": "pointerUp", "button": 0},
                        ],
                    }
                ],
            },
        )


@dataclass
class Firefox:
    process: subprocess.Popen[bytes]
    bidi: BiDi
    tab: Tab
    log_path: Path
    proxy: ProxySentinel
    preload_scripts: list[str] = field(default_factory=list)

    def add_preload_script(self, function: str) -> None:
        """Run ``function`` in every new document before the page's own scripts."""
        result = self.bidi.command("script.addPreloadScript", {"functionDeclaration": function})
        self.preload_scripts.append(str(result.get("script")))

    def console(self) -> list[str]:
        """The page console lines received so far (log.entryAdded events)."""
        lines = []
        for event in self.bidi.events:
            if event.get("method") == "log.entryAdded":
                entry = event.get("params", {})
                lines.append(f"[firefox] {entry.get('level')}: {entry.get('text')}")
        return lines

    def log_tail(self, max_chars: int = 10_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return "(no firefox log)"


@contextlib.contextmanager
def launch_firefox(
    workdir: Path, extra_prefs: dict[str, Any] | None = None, start_timeout: float = 60
) -> Iterator[Firefox]:
    """Start headless firefox-esr on a fresh profile and open a BiDi session on it."""
    if not Path(FIREFOX).exists():
        raise FileNotFoundError(f"{FIREFOX} is not installed (apt-get install firefox-esr)")
    profile = workdir / "firefox-profile"
    proxy = ProxySentinel()
    proxy_ports = {"network.proxy.http_port": proxy.port, "network.proxy.ssl_port": proxy.port}
    write_profile(
        profile, {**QUIET_PREFS, **proxy_ports, **FAKE_MEDIA_PREFS, **(extra_prefs or {})}
    )
    port = _free_port()
    log_path = workdir / "firefox.log"
    env = {
        **os.environ,
        "MOZ_CRASHREPORTER_DISABLE": "1",
        "MOZ_HEADLESS": "1",
        "MOZ_DISABLE_NONLOCAL_CONNECTIONS": "1",
    }
    env.pop("DISPLAY", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                FIREFOX,
                "--headless",
                "--no-remote",
                "--profile",
                str(profile),
                f"--remote-debugging-port={port}",
                "--remote-allow-hosts=127.0.0.1",
                "about:blank",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    bidi: BiDi | None = None
    try:
        deadline = time.monotonic() + start_timeout
        while bidi is None:
            if process.poll() is not None:
                raise RuntimeError(
                    f"firefox exited with {process.returncode}:\n{log_path.read_text()[-5000:]}"
                )
            try:
                bidi = BiDi(f"ws://127.0.0.1:{port}/session")
            except (OSError, WebSocketException, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        bidi.command("session.new", {"capabilities": {}})
        bidi.command("session.subscribe", {"events": ["log.entryAdded"]})
        tree = bidi.command("browsingContext.getTree", {"maxDepth": 0})
        tab = Tab(bidi, tree["contexts"][0]["context"])
        yield Firefox(process=process, bidi=bidi, tab=tab, log_path=log_path, proxy=proxy)
    finally:
        if bidi is not None:
            with contextlib.suppress(BiDiError, WebSocketException, OSError):
                bidi.command("session.end", {}, timeout=5)
            bidi.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        proxy.close()
        shutil.rmtree(profile, ignore_errors=True)

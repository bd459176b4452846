"""A media worker SIGKILLed mid-call: both real pages have media again within 3 s of the
server's `restart_media`, and the crash leaves an incident and an audit entry.

The worker's pid comes from the admin health API, as an operator would find it; the kill is
a real SIGKILL of that process (no shutdown code runs in it). Each page records when its
socket received `restart_media` (the page's own clock), and the figure printed is, per page,
the time from that message to its remote video rendering ten new frames.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from .conftest import Browsers, DialogueWavs, browser_pair
from .helpers import VIDEO_PLAYING_JS, new_page, open_and_admit, wait_for

pytestmark = pytest.mark.browser

REMOTE = '[data-testid="remote-video"]'
# The acceptance: 3 s from `restart_media`. Measured 0.83-1.37 s at load 3-7 on 2 cores
# (offer sent 0.07-0.18 s, connected 0.2-0.7 s, first remote video 0.33-0.81 s, then ten
# frames); 2.96-4.54 s was seen at load ~10 with six test runs sharing the 2 cores.
MEDIA_BACK_WITHIN_S = 3.0
THERAPIST = ("crash.therapist@example.test", "amber-meadow-7316")

# The page's clock when any socket of it received `restart_media` (window.__restartAt).
RECORD_RESTART_JS = """
(() => {
  const Original = window.WebSocket;
  window.__restartAt = null;
  window.__offerAt = null;
  class RecordingWebSocket extends Original {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        try {
          if (JSON.parse(event.data).type === "restart_media") {
            window.__restartAt = performance.now();
          }
        } catch {}
      });
    }
  }
  const send = Original.prototype.send;
  Original.prototype.send = function (data) {
    try {
      if (window.__restartAt !== null && window.__offerAt === null
          && JSON.parse(data).type === "offer") {
        window.__offerAt = performance.now();
      }
    } catch {}
    return send.call(this, data);
  };
  window.WebSocket = RecordingWebSocket;
  window.__connectedAt = null;
  const OriginalPc = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends OriginalPc {
    constructor(...args) {
      super(...args);
      const created = window.__restartAt;
      this.addEventListener("connectionstatechange", () => {
        if (created !== null && this.connectionState === "connected"
            && window.__connectedAt === null) {
          window.__connectedAt = performance.now();
        }
      });
    }
  };
})();
"""


def login(server: Any, email: str, password: str) -> httpx.Client:
    return server.signed_in(email, password)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def own_browsers(pw: Any, dialogue_wavs: DialogueWavs) -> Iterator[Browsers]:
    with browser_pair(pw, dialogue_wavs.therapist, dialogue_wavs.client) as pair:
        yield pair


# Started on both pages before the kill: once `restart_media` arrived, polls (every 50 ms, in
# the page, so neither page waits on the other's probe) until the remote video has rendered 10
# new frames, and stores when (window.__backAt, the page's clock).
WATCH_BACK_JS = """
([selector, key, probeSource]) => {
  const probe = eval(probeSource);
  window.__backAt = null;
  window.__shownAt = null;
  const before = document.querySelector(selector).srcObject;
  const timer = setInterval(() => {
    if (window.__restartAt === null) return;
    const v = document.querySelector(selector);
    if (window.__shownAt === null && v.srcObject !== before) window.__shownAt = performance.now();
    if (probe([selector, key, 10])) {
      window.__backAt = performance.now();
      clearInterval(timer);
    }
  }, 50);
}
"""


def media_back_after_restart(page: Page, deadline_s: float) -> float:
    """Seconds from the page's `restart_media` to its remote video rendering 10 new frames."""
    page.wait_for_function("() => window.__backAt !== null", timeout=deadline_s * 1000)
    return float(page.evaluate("() => (window.__backAt - window.__restartAt) / 1000"))


def test_a_killed_media_worker_brings_both_videos_back_within_3_s(
    rapport_server: Any, own_browsers: Browsers
) -> None:
    server = rapport_server
    log: list[str] = []
    email, password = server.add_user(*THERAPIST)
    http = login(server, email, password)
    admin = login(server, *server.users["admin"])
    res = http.post("/api/sessions", json={"client_label": f"Crash {uuid.uuid4().hex[:6]}"})
    assert res.status_code == 201, res.text
    session_id, invite_url = res.json()["id"], res.json()["invite_url"]
    t_ctx, t = new_page(own_browsers.therapist, server.base_url, log, "therapist",
                        init_script=RECORD_RESTART_JS)  # fmt: skip
    c_ctx, c = new_page(own_browsers.client, server.base_url, log, "client",
                        init_script=RECORD_RESTART_JS)  # fmt: skip
    try:
        credentials = {"email": email, "password": password}
        open_and_admit(t, c, session_id, invite_url, credentials)
        for page in (t, c):
            page.wait_for_function(VIDEO_PLAYING_JS, arg=[REMOTE, "first", 10], timeout=30_000)

        # The worker hosting this call, as the admin health view names it.
        calls = admin.get("/api/admin/calls").json()["calls"]
        index = next(x["media_worker"] for x in calls if x["session_id"] == session_id)
        workers = admin.get("/api/admin/health").json()["media_workers"]
        pid = int(next(w for w in workers if w.get("index", 0) == index)["pid"])
        assert pid != server.process.pid

        for page in (t, c):
            page.evaluate(WATCH_BACK_JS, [REMOTE, "after-kill", VIDEO_PLAYING_JS])
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Generous deadlines to observe; the 3 s acceptance is asserted on the figures.
        back = {
            name: media_back_after_restart(page, 20.0)
            for name, page in (("therapist", t), ("client", c))
        }
        since_kill = time.monotonic() - killed
        # Where the time went, per page: restart_media -> offer sent -> connected -> frames.
        for name, page in (("therapist", t), ("client", c)):
            offer, connected, shown = page.evaluate(
                "() => [window.__offerAt, window.__connectedAt, window.__shownAt]"
                ".map((at) => (at - window.__restartAt) / 1000)"
            )
            print(
                f"{name}: offer sent {offer:.2f} s, connected {connected:.2f} s,"
                f" first remote video {shown:.2f} s"
            )
        print(
            "media back after restart_media: "
            + ", ".join(f"{name} {s:.2f} s" for name, s in back.items())
            + f" (both within {since_kill:.2f} s of the SIGKILL)"
        )
        for name, seconds in back.items():
            assert seconds <= MEDIA_BACK_WITHIN_S, (name, seconds)

        incidents = admin.get("/api/admin/incidents").json()["incidents"]
        crash = [i for i in incidents if i.get("kind") == "worker_restarted"]
        assert any(i["session_id"] == session_id and str(pid) in i["detail"] for i in crash)
        audit = admin.get("/api/admin/audit", params={"session_id": session_id}).json()
        entry = next(e for e in audit["events"] if e["action"] == "media_worker_restarted")
        assert entry["actor"] == "system" and "Robin" not in entry["detail"]
        # A new worker serves; the call ended normally afterwards is not this test's concern.
        workers = wait_for(
            lambda: [
                w
                for w in admin.get("/api/admin/health").json()["media_workers"]
                if w.get("alive") and int(w["pid"]) != pid
            ],
            timeout=20,
            what="a replacement media worker",
        )
        assert workers
    finally:
        for ctx in (t_ctx, c_ctx):
            ctx.close()
        http.close()
        admin.close()

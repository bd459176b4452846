"""A page's media recovery does not undo itself: real chromium pages, a real server.

A `media_failed` answer to an offer makes the page retry 2 s later; when the server meanwhile
asked for a fresh connection (`restart_media`, as after a media worker crash), that retry
must not tear down the connection just built. The two server messages are delivered through
the page's own socket, in the shapes signaling/messages.py gives them, so the page's order of
events is exactly the one under test.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from signaling import messages as m

from .conftest import Browsers
from .helpers import VIDEO_PLAYING_JS, close_contexts, new_page, open_and_admit

pytestmark = pytest.mark.browser

REMOTE = '[data-testid="remote-video"]'
THERAPIST = ("recovery.therapist@example.test", "pale-orchard-4182")

# Keeps the page's sockets, every RTCPeerConnection it builds (with when), and when it sent
# each offer; window.__deliver(json) hands a message to the page as if its socket received it.
RECORD_JS = """
(() => {
  const OriginalWS = window.WebSocket;
  window.__sockets = [];
  window.__offers = [];
  window.WebSocket = class extends OriginalWS {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
    }
    send(data) {
      try {
        if (JSON.parse(data).type === "offer") window.__offers.push(performance.now());
      } catch {}
      return super.send(data);
    }
  };
  window.__deliver = (text) => {
    const ws = window.__sockets[window.__sockets.length - 1];
    ws.dispatchEvent(new MessageEvent("message", { data: text }));
  };
  const OriginalPC = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = class extends OriginalPC {
    constructor(...args) {
      super(...args);
      window.__pcs.push({ pc: this, at: performance.now() });
    }
  };
})();
"""


def test_a_media_failed_retry_leaves_a_connection_restarted_meanwhile_alone(
    rapport_server: Any, browsers: Browsers, console_log: list[str]
) -> None:
    server = rapport_server
    email, password = server.add_user(*THERAPIST)
    http: httpx.Client = server.signed_in(email, password)
    res = http.post("/api/sessions", json={"client_label": f"Recovery {uuid.uuid4().hex[:6]}"})
    assert res.status_code == 201, res.text
    session_id, invite_url = res.json()["id"], res.json()["invite_url"]
    t_ctx, t = new_page(browsers.therapist, server.base_url, console_log, "therapist")
    c_ctx, c = new_page(
        browsers.client, server.base_url, console_log, "client", init_script=RECORD_JS
    )
    try:
        credentials = {"email": email, "password": password}
        open_and_admit(t, c, session_id, invite_url, credentials)
        for page in (t, c):
            page.wait_for_function(VIDEO_PLAYING_JS, arg=[REMOTE, "first", 10], timeout=30_000)

        failed = m.ErrorMessage(
            code=m.ErrorCode.MEDIA_FAILED,
            message="The media server restarted; reconnecting should work.",
            ref="offer",
        ).model_dump_json()
        restart = m.RestartMedia(reason="worker_restarted").model_dump_json()
        c.evaluate(
            """([failed, restart]) => {
              window.__mark = performance.now();
              window.__pcsBefore = window.__pcs.length;
              window.__deliver(failed);
              window.__deliver(restart);
            }""",
            [failed, restart],
        )
        # The restart builds one connection, and it connects...
        c.wait_for_function(
            "() => window.__pcs.length > window.__pcsBefore"
            " && window.__pcs[window.__pcs.length - 1].pc.connectionState === 'connected'",
            timeout=20_000,
        )
        # ...and is still the page's only new one once the retry's 2 s are well over.
        c.wait_for_function("() => performance.now() - window.__mark > 3500", timeout=20_000)
        built, offers, state = c.evaluate(
            """() => [
              window.__pcs.length - window.__pcsBefore,
              window.__offers.filter((at) => at >= window.__mark).length,
              window.__pcs[window.__pcs.length - 1].pc.connectionState,
            ]"""
        )
        print(f"after media_failed + restart_media: {built} connection(s), {offers} offer(s)")
        assert (built, offers, state) == (1, 1, "connected"), console_log
        started = time.monotonic()
        c.wait_for_function(VIDEO_PLAYING_JS, arg=[REMOTE, "after", 10], timeout=20_000)
        print(f"client video advancing {time.monotonic() - started:.1f} s after the check")
    finally:
        close_contexts(t_ctx, c_ctx)
        http.close()

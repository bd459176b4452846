"""Helpers shared by the browser tests: contexts, bounded polling, video probes, axe, pictures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import BrowserContext, Locator, Page, ViewportSize, expect

from tests.support import eventually_sync

WAIT_MS = 30_000
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

T = TypeVar("T")

# Records the type of every message any WebSocket on the page receives (window.__wsTypes).
RECORD_WS_JS = """
(() => {
  const Original = window.WebSocket;
  window.__wsTypes = [];
  class RecordingWebSocket extends Original {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        let type = "(not json)";
        try { type = JSON.parse(event.data).type; } catch {}
        window.__wsTypes.push(type);
      });
    }
  }
  window.WebSocket = RecordingWebSocket;
})();
"""

# Truthy once the <video> has dimensions and is rendering frames.
VIDEO_PLAYING_JS = """
([selector, key, minFrames]) => {
  const v = document.querySelector(selector);
  if (!v || !v.srcObject || v.videoWidth === 0 || v.readyState < 2 || v.paused) return false;
  v.__probes = v.__probes || {};
  let p = v.__probes[key];
  const total = () => v.getVideoPlaybackQuality().totalVideoFrames;
  if (!p || p.stream !== v.srcObject) {
    v.__probes[key] = { stream: v.srcObject, start: total() };
    return false;
  }
  return total() - p.start >= minFrames ? { width: v.videoWidth, height: v.videoHeight } : false;
}
"""


def new_page(
    browser: Any,
    base_url: str,
    log: list[str],
    name: str,
    *,
    viewport: ViewportSize | None = None,
    init_script: str | None = None,
) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport=viewport or DESKTOP, base_url=base_url)
    context.set_default_timeout(WAIT_MS)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.on("console", lambda msg: log.append(f"[{name}] {msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: log.append(f"[{name}] pageerror: {err}"))
    return context, page


def close_contexts(*contexts: BrowserContext) -> None:
    """Close every browser context even if one fails (a crashed page must not hide the
    test's own failure behind a teardown error, nor leave the other contexts open)."""
    for ctx in contexts:
        with contextlib.suppress(Exception):
            ctx.close()


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """``eventually_sync`` for probes of a page or an API: poll ``probe`` until it returns
    something truthy, and name ``what`` was awaited (and the probe's last answer) on timeout.

    Waits on one element's state are Playwright's ``expect`` or ``wait_for_function``; this
    is for conditions that combine page reads with API responses.
    """
    last: list[T | None] = [None]

    def probed() -> T | None:
        last[0] = probe()
        return last[0]

    return eventually_sync(
        probed,
        timeout=timeout,
        interval=interval,
        message=lambda: f"{what} (last: {last[0]!r})",
    )


def wait_video(
    page: Page, key: str, selector: str, min_frames: int = 10, timeout_ms: float = WAIT_MS
) -> Any:
    return page.wait_for_function(
        VIDEO_PLAYING_JS, arg=[selector, key, min_frames], polling=200, timeout=timeout_ms
    ).json_value()


def page_errors(log: list[str]) -> list[str]:
    return [line for line in log if "pageerror" in line]


def shoot(page: Page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def axe_violations(page: Page, include: list[str] | None = None) -> list[dict[str, Any]]:
    """Run axe-core (vendored by axe-playwright-python) for WCAG 2.0/2.1 A and AA, on the
    whole page or only on the elements the ``include`` selectors match.

    The 570 kB script is injected once per document, not on every check: the page tour checks
    each page at two sizes, and re-parsing axe each time was 10-15 % of that test."""
    from axe_playwright_python.base import AXE_SCRIPT

    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_SCRIPT)
    options = {"runOnly": {"type": "tag", "values": WCAG_TAGS}, "resultTypes": ["violations"]}
    context = {"include": [[selector] for selector in include]} if include else None
    results: dict[str, Any] = page.evaluate(
        "([context, options]) => axe.run(context ?? document, options)", [context, options]
    )
    violations: list[dict[str, Any]] = results["violations"]
    return violations


def describe_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        for node in v["nodes"][:5]:
            lines.append(f"    {node['target']}: {node.get('failureSummary', '')[:300]}")
    return "\n".join(lines)


def stage_in(page: Page, state: str) -> Locator:
    """The call stage while it is in `state` (its data-state: waiting, call, ended, left, ...)."""
    return page.locator(f'[data-testid="stage"][data-state="{state}"]')


def end_title(page: Page, state: str) -> Locator:
    """The end panel's title, only while the stage shows the final `state` (ended, left, ...)."""
    return stage_in(page, state).get_by_test_id("end-title")


def end_detail(page: Page, state: str) -> Locator:
    """The end panel's detail line, only while the stage shows the final `state`."""
    return stage_in(page, state).get_by_test_id("end-detail")


def open_and_admit(
    t: Page,
    c: Page,
    session_id: str,
    invite_url: str,
    login: dict[str, str] | None = None,
    name: str = "Robin",
) -> None:
    """The usual start of a call: the therapist (signed in first when ``login`` is given)
    opens the room, the client opens the link, joins as ``name``, and is admitted."""
    if login is not None:
        assert t.request.post("/api/login", data=login).ok
    t.goto(f"/sessions/{session_id}", wait_until="domcontentloaded")
    c.goto(invite_url, wait_until="domcontentloaded")
    expect(c.get_by_test_id("join-button")).to_be_enabled()
    c.get_by_test_id("display-name").fill(name)
    c.get_by_test_id("join-button").click()
    t.get_by_test_id("admit-button").click()

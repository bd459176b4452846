"""The therapist's ``long_silence_seconds`` preference sets what the live engine counts.

Before, the preference was stored and shown in the settings form but every session's engine
used the built-in 3 s, so a therapist who asked for 5 s still saw a 4 s pause counted.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
import numpy as np
import pytest

from server.alliance_hub import SignalsHub
from server.db import Database
from tests.conftest import LiveServer
from tests.media_helpers import FakeBrowser, PcmTrack
from tests.signaling_helpers import Participant, open_room

SILENCE = np.zeros(48_000, dtype=np.int16)


async def _snapshot_where(t: Participant, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
    async def _wait() -> dict[str, Any]:
        while True:
            message = await t.expect("signals", timeout=timeout)
            if predicate(message["snapshot"]):
                return dict(message["snapshot"])

    return await asyncio.wait_for(_wait(), timeout)


@pytest.mark.parametrize("live_server", [0], indirect=True, ids=["in-process"])
async def test_a_4_s_silence_is_not_long_for_a_therapist_who_chose_5_s(
    live_server: LiveServer, therapist: httpx.AsyncClient
) -> None:
    prefs = (await therapist.get("/api/me/preferences")).json()
    saved = await therapist.put("/api/me/preferences", json={**prefs, "long_silence_seconds": 5})
    assert saved.status_code == 200, saved.text

    _, t, c, _ = await open_room(live_server.ws_url, therapist)
    await t.start_media(FakeBrowser(audio=PcmTrack(SILENCE)))
    await c.start_media(FakeBrowser(audio=PcmTrack(SILENCE)))

    # Both present, nobody talking: with the default 3 s this snapshot counts one.
    at_4s = await _snapshot_where(t, lambda s: 4.0 <= s["current_silence_s"] < 4.9)
    assert at_4s["long_silences"] == 0, at_4s
    # The threshold is 5 s, not "never": the same silence counts once it reaches it.
    at_5s = await _snapshot_where(t, lambda s: s["current_silence_s"] >= 5.5)
    assert at_5s["long_silences"] == 1, at_5s


def test_sessions_without_the_preference_keep_the_3_s_default() -> None:
    hub = SignalsHub(cast(Database, None), silero_assist=False)  # no audio here
    assert hub.config_for(None).long_silence_s == 3.0
    assert hub.config_for({"panel_open": True}).long_silence_s == 3.0
    assert hub.config_for({"long_silence_seconds": 7}).long_silence_s == 7.0
    assert hub.config_for({"long_silence_seconds": True}).long_silence_s == 3.0

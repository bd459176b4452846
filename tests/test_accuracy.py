"""The product's accuracy bar: full audio chain on noisy synthetic dialogues vs ground truth.

Each dialogue is 3 minutes (seeds cover quiet/loud speakers and white, pink, brown noise
and hum at about -45 dBFS). By default seeds 0-9 run; RAPPORT_ACCURACY_COUNT=N changes
that (RAPPORT_LONG_TESTS=1 adds seeds 10-19 as a held-out check of the VAD tuning).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from media.alliance.offline import analyze_files
from tests.fixtures.accuracy_report import METRICS, Result
from tests.fixtures.dialogues import generate_dialogue


def _seeds() -> list[int]:
    count = int(os.environ.get("RAPPORT_ACCURACY_COUNT", "10"))
    if os.environ.get("RAPPORT_LONG_TESTS") == "1":
        count = max(count, 20)
    return list(range(count))


@pytest.mark.parametrize("seed", _seeds())
def test_three_minute_dialogue_within_tolerances(seed: int, tmp_path: Path) -> None:
    dialogue = generate_dialogue(seed, 180.0, tmp_path)
    measured = analyze_files(dialogue.therapist_wav, dialogue.client_wav)
    failures = Result(dialogue, measured, 0.0).failures()
    assert not failures, "\n".join(failures)
    # Sanity: the dialogue really exercises the definitions.
    truth = dialogue.truth
    assert truth.turns >= 15 and truth.overlap_s > 0 and truth.backchannels > 0
    assert len(METRICS) >= 7

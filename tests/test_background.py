"""A TV or other people talking in the room must not count as a participant's talk.

The level model alone (how loud the owner's voice is) cannot both follow a speaker who moves
away and refuse a quieter voice in the room. What does tell them apart is turn-taking: the
owner's speech alternates with the other participant's, a TV plays whoever holds the floor.
These dialogues are tests/fixtures/rooms.py's "background-15" condition (espeak and recorded
voices through a reverberant room, 15 dB under each speaker, on three quarters of the time),
held to the whole real-room bar of tests/fixtures/room_report.py.

The turn-taking cue's guards are checked on synthetic frames (levels exact, no detector):
the cue must judge a band against the conversation the participant actually has, and only
on evidence gathered once their own voice has been heard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from media.alliance.attribution import AttributionTuning, Attributor, _LevelModel
from media.alliance.engine import ROLES, ParticipantAudio, Role, SessionClockEngine
from media.alliance.offline import analyze_files, decode_mono_48k
from media.alliance.vad import FrameFeatures, VoiceActivityDetector
from tests.fixtures.dialogues import FRAME_SAMPLES, have_tools, read_wav
from tests.fixtures.room_report import ROOM_METRICS
from tests.fixtures.rooms import CONDITIONS, RoomDialogue, generate_room_dialogue
from tests.media_helpers import BANDS as _BANDS
from tests.media_helpers import Level
from tests.media_helpers import level_frame as _frame

needs_tools = pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and sox")
T, C = Role.THERAPIST, Role.CLIENT


@pytest.fixture(scope="module")
def tv_room(tmp_path_factory: pytest.TempPathFactory) -> RoomDialogue:
    """Seed 2 of "background-15", three minutes (rendered once for the module)."""
    out = tmp_path_factory.mktemp("tv-room")
    return generate_room_dialogue(2, CONDITIONS["background-15"], 180.0, out)


@needs_tools
def test_tv_at_minus_15_db_for_three_minutes_meets_the_room_bar(tv_room: RoomDialogue) -> None:
    """Before the turn-taking statistic the TV added 9.7 % to the therapist's talk and took
    16 % of the silence (heard in the pauses of the conversation, it pulled the level
    reference down and was then taken for the therapist)."""
    d = tv_room.dialogue
    measured = analyze_files(d.therapist_wav, d.client_wav)
    failures = [
        f"{m.name}: measured {m.error(measured, d.truth):+.3f} ({m.tolerance})"
        for m in ROOM_METRICS
        if m.in_bar and not m.ok(measured, d.truth)
    ]
    assert not failures, failures


@needs_tools
def test_a_tv_over_the_others_talk_is_refused_with_the_echo_cap_on(tmp_path: Path) -> None:
    """The echo cap (``echo_reg_cap_db``) keeps the echo veto to real echo, so a speaker who
    moved away is no longer vetoed over the other's talk (drift). But in a room with a TV
    and no echo, the gain the echo path learns from the TV over the other's voice was
    what refused the TV heard while the other talks: background-15 seed 4 with the cap
    alone counts 5.9 s of overlap too many and a long silence too few. The microphone
    shows it is such a room — the other's sure talk often comes with speech far under the
    owner's level — and there the gain is used uncapped: overlap +1.7 s, within the bar.
    (The cap and its gate are the defaults since session 25.)"""
    d = generate_room_dialogue(4, CONDITIONS["background-15"], 180.0, tmp_path).dialogue
    feed = ParticipantAudio(SessionClockEngine(None))
    pcm = {r: decode_mono_48k(d.wav(r)) for r in ROLES}
    n = feed.frame_samples
    for r in ROLES:
        feed.set_present(r, True)
    for i in range(min(x.size for x in pcm.values()) // n):
        for r in ROLES:
            feed.push(r, pcm[r][i * n : (i + 1) * n])
        feed.tick()
    measured = feed.engine.finalize()
    failures = [
        f"{m.name}: measured {m.error(measured, d.truth):+.3f} ({m.tolerance})"
        for m in ROOM_METRICS
        if m.in_bar and not m.ok(measured, d.truth)
    ]
    assert not failures, failures


@needs_tools
def test_speech_heard_while_only_the_tv_plays_is_not_attributed(tv_room: RoomDialogue) -> None:
    """Frame by frame: of the speech-like frames the detector hears while neither
    participant speaks (nor within 0.2 s), the level model alone attributed 8.8 % to the
    microphone's owner; with the turn-taking statistic 3.5 %."""
    d = tv_room.dialogue
    pcm = {role: read_wav(d.wav(role))[0] for role in ROLES}
    detectors = {r: VoiceActivityDetector() for r in ROLES}
    att = Attributor(detectors[Role.THERAPIST].n_bands, detectors[Role.THERAPIST].n_gate_bands)
    n = min(x.size for x in pcm.values()) // FRAME_SAMPLES
    heard = 0
    attributed = 0
    for i in range(n):
        frames = {
            r: detectors[r].analyze(pcm[r][i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
            for r in ROLES
        }
        out = att.step(frames)
        for r in ROLES:
            if frames[r].speech and not d.masks[r][max(0, i - 10) : i + 11].any():
                heard += 1
                attributed += out[r]
    assert heard > 2000  # the TV is heard for over a minute in all
    assert attributed < 0.05 * heard, (attributed, heard)


def _attribute(script: Sequence[tuple[Level, Level]]) -> tuple[list[dict[Role, bool]], int]:
    """Run (therapist, client) frame levels through attribution: the verdicts per frame and
    how many frames turn-taking vetoed."""
    att = Attributor(_BANDS, _BANDS)
    verdicts = []
    turn_vetoes = 0
    for t, c in script:
        verdicts.append(att.step({T: _frame(t), C: _frame(c)}))
        turn_vetoes += sum(att.vetoed[r] == "turn-taking" for r in ROLES)
    return verdicts, turn_vetoes


def test_turn_taking_evidence_from_before_the_owners_voice_was_heard_is_not_used() -> None:
    """The therapist murmurs at −34 dBFS over the client for the first 10 s, before being
    heard alone; then they take turns at −20 dBFS for 67 s, then the therapist goes on
    14 dB quieter (moved back from the laptop), still taking turns. The first 10 s say
    "the −34 dB band plays whenever the client talks", which is the TV's signature, but they
    were gathered when nothing yet said which voice is the therapist's. Counted, they flag
    the band and every frame of the quieter therapist is vetoed (0 of 800); discarded, the
    quieter therapist is followed (733 of 800, the rest while the level model catches up)."""
    script: list[tuple[Level, Level]] = [(None, -20.0)]
    script += [(-34.0, -20.0)] * 500
    for _ in range(15):
        script += [(-20.0, None)] * 100 + [(None, None)] * 25
        script += [(None, -20.0)] * 100 + [(None, None)] * 25
    start = len(script)
    for _ in range(8):
        script += [(-34.0, None)] * 100 + [(None, None)] * 25
        script += [(None, -20.0)] * 100 + [(None, None)] * 25
    verdicts, _ = _attribute(script)
    quiet = [v[T] for (t, _), v in zip(script[start:], verdicts[start:], strict=True) if t]
    assert len(quiet) == 800
    assert sum(quiet) >= 0.8 * len(quiet), sum(quiet)


def _independent_talk(rng: np.random.Generator, frames: int) -> list[Level]:
    """Bursts of words at −20 dBFS with quieter words (−35) among them, and pauses, with no
    regard to the other side: what a looped fake microphone plays."""
    track: list[Level] = []
    while len(track) < frames:
        for _ in range(int(rng.integers(2, 8))):
            track += [-20.0] * int(rng.integers(6, 14))
            track += [-35.0] * int(rng.integers(8, 20))
        track += [None] * int(rng.integers(20, 120))
    return track[:frames]


def test_no_band_is_background_when_the_owner_does_not_take_turns_either() -> None:
    """Two participants who talk regardless of each other (Chromium's looped fake
    microphones, constant double-talk): every band of a microphone, the owner's own loud
    words included, falls while the other talks at about the chance rate, which by the
    absolute threshold is a TV's. Judged against the owner's own band, nothing stands out:
    no frame is vetoed for turn-taking (without the comparison, 883 of the therapist's
    quieter frames were), and no run is cut short for "falling 15 dB in a band that does
    not take turns" (78 % of each side's speech frames are kept; 72 % and 71 % when the cut
    judged the band in the absolute)."""
    rng = np.random.default_rng(1)
    frames = 9000  # three minutes
    script = list(zip(_independent_talk(rng, frames), _independent_talk(rng, frames), strict=True))
    verdicts, turn_vetoes = _attribute(script)
    assert turn_vetoes == 0
    for i, role in enumerate(ROLES):
        heard = sum(levels[i] is not None for levels in script)
        accepted = sum(v[role] for v in verdicts)
        assert accepted >= 0.75 * heard, (role, accepted, heard)


Heard = tuple[float, bool] | None  # (frame level dBFS, detector's speech flag); None: quiet


def _heard(h: Heard) -> FrameFeatures:
    level, speech = h if h is not None else (-70.0, False)
    power = 10.0 ** (level / 10.0)
    return FrameFeatures(speech, level, -90.0, 6.0, np.full(_BANDS, power / _BANDS))


def _word(level: float, frames: int, tail_db: float | None) -> list[Heard]:
    """A word at ``level``: ending abruptly (``tail_db`` None, a near, dry voice) or in a
    room's tail falling ``tail_db`` per frame (a distant voice), heard as not speech."""
    tail: list[Heard] = [None] * 5
    if tail_db is not None:
        tail = [(level - tail_db * (k + 1), False) for k in range(5)]
    return [(level, True)] * frames + tail


def _owner_then_tv(owner_tail_db: float | None) -> tuple[list[Heard], list[bool]]:
    """The therapist's words at −20 dBFS, each followed within 0.2 s by three words of a
    TV 14 dB quieter, from a reverberant room (3 dB per 20 ms tail); the client silent.
    Returns the therapist's track and which of its frames are the TV's."""
    track: list[Heard] = []
    tv: list[bool] = []
    for _ in range(60):
        owner = _word(-20.0, 20, owner_tail_db) + [None] * 5
        track += owner
        tv += [False] * len(owner)
        for _ in range(3):
            word = _word(-34.0, 12, 3.0)
            track += word
            tv += [True] * len(word)
        track += [None] * 40
        tv += [False] * 40
    return track, tv


def _accepted(track: list[Heard], tuning: AttributionTuning | None = None) -> list[bool]:
    att = Attributor(_BANDS, _BANDS, tuning)
    return [att.step({T: _heard(h), C: None})[T] for h in track]


def test_a_reverberant_voice_well_under_a_dry_owner_is_not_theirs() -> None:
    """A TV right after the owner's words is taken for the owner carrying on (a run
    survives pauses between words, and a run the owner started is held 16 dB down): the
    level model alone accepts all of the TV's speech frames. Its words end in the room's
    tail, the owner's stop dead; once enough of both have been heard (8 of the owner's
    runs) the TV's level band is smoother than the owner's own and its speech 14 dB down
    is vetoed. Over the last two thirds, 160 of its 1440 frames still pass (the first
    frames of each run, whose mean still holds the owner's word); without the cue 1440."""
    track, tv = _owner_then_tv(owner_tail_db=None)
    accepted = _accepted(track)
    speech = [h is not None and h[1] for h in track]
    late = len(track) // 3
    tv_speech = sum(s and b for s, b in zip(speech[late:], tv[late:], strict=True))
    tv_taken = sum(a and b for a, b in zip(accepted[late:], tv[late:], strict=True))
    owner_speech = sum(s and not b for s, b in zip(speech, tv, strict=True))
    owner_taken = sum(a and s and not b for a, s, b in zip(accepted, speech, tv, strict=True))
    assert tv_speech == 1440
    assert tv_taken < 0.15 * tv_speech, tv_taken
    assert owner_taken == owner_speech == 1200


def test_a_voice_no_more_reverberant_than_the_owner_is_judged_by_level_alone() -> None:
    """Where the owner's own words end in the same room tail (a laptop user in a real
    room), the quieter voice's band is no smoother than the owner's: every frame is
    decided as with the cue off."""
    track, _ = _owner_then_tv(owner_tail_db=3.0)
    off = AttributionTuning(sharp_owner_factor=0.0)
    assert _accepted(track) == _accepted(track, off)


def test_a_voice_far_under_the_owner_is_not_taken_during_the_warm_up() -> None:
    """The level model vetoes nothing until 2 s of the owner's speech have been heard, so a
    TV in the room was taken for the therapist in the first seconds of a session even when
    the therapist had already spoken: background-25 seed 8 (the TV 25-40 dB under the
    therapist's first words, accepted for 1.1 s in the pauses around the client's talk)
    failed on overlap by that. Here the therapist says a first word at -20 dBFS, then a
    TV 28 dB quieter plays in four runs: all 60 of its frames were attributed to the
    therapist; a voice that far under the loudest one heard is no longer (0 of 60). The
    therapist's own quieter word (14 dB under their first) is still theirs."""
    script: list[tuple[Level, Level]] = [(-20.0, None)] * 30 + [(None, None)] * 20
    tv = len(script)
    for _ in range(4):
        script += [(-48.0, None)] * 15 + [(None, None)] * 12
    quiet = len(script)
    script += [(-34.0, None)] * 20
    verdicts, _ = _attribute(script)
    heard = zip(script[tv:quiet], verdicts[tv:quiet], strict=True)
    tv_taken = sum(v[T] for (t, _), v in heard if t)
    assert sum(v[T] for v in verdicts[:30]) == 30
    assert tv_taken == 0, tv_taken
    assert sum(v[T] for v in verdicts[quiet:]) == 20


def _turns(seconds: float) -> list[tuple[Level, Level]]:
    """Therapist and client take turns (2 s each, a 0.5 s pause between), their syllables
    (0.1 s) at −18…−24 dBFS."""
    rng = np.random.default_rng(5)
    script: list[tuple[Level, Level]] = []
    while len(script) < seconds * 50:
        for speaker in (T, C):
            for k in range(125):
                if k % 5 == 0:
                    own = -18.0 - float(rng.uniform(0.0, 6.0)) if k < 100 else None
                script.append((own if speaker is T else None, own if speaker is C else None))
    return script


def test_the_echo_cap_waits_for_evidence_that_there_is_no_tv() -> None:
    """The regression cap keeps the echo veto to real echo (a speaker who moved away keeps
    their talk over the other's), but the uncapped gain is what refuses a TV heard over the
    other's talk (tests/test_attribution.py's 60 s TV rooms fail with it capped). Until the
    other participant has surely talked ``room_min_s`` (10 s) nothing says there is no TV,
    so the cap waits, then a room without one gets it. (Session 24's gate started from "no
    TV" and capped from the first frame.)"""
    att = Attributor(_BANDS, _BANDS)
    client_sure_s = 0.0
    early = []
    for t, c in _turns(60.0):
        att.step({T: _frame(t), C: _frame(c)})
        client_sure_s += 0.02 * att._levels[C].sure
        if client_sure_s < 10.0:
            early.append(att.echo_capped(T))
    assert len(early) > 500 and not any(early)
    assert client_sure_s > 15.0
    assert att.echo_capped(T)


@pytest.mark.parametrize("lost_fraction", [None, 0.05])
def test_a_speaker_who_moved_away_is_followed_though_a_few_frames_stay_loud(
    lost_fraction: float | None,
) -> None:
    """A speaker who moves 12 dB away in a noisy room: most of their speech frames now sit
    12 dB under their level reference, but one in twelve still comes within 6 dB of it (a
    typing burst, a door, the other's voice in the echo). Under a tenth of frames near the
    reference is "the louder voice is gone", and the reference falls at the fast rate: ten
    seconds on it is within 6 dB of their new level, where their talk stops being vetoed as
    background. With session 25's 0.05 the one loud frame in twelve (8 %) held it at the
    slow rate, still ~2.5 dB under the old level (combined seeds 5 and 9: the therapist
    vetoed for 20 s after the drift began)."""
    tuning = (
        AttributionTuning()
        if lost_fraction is None
        else AttributionTuning(level_lost_fraction=lost_fraction)
    )
    model = _LevelModel(tuning)
    for _ in range(1000):  # 20 s of their voice at -30 dBFS
        model.feed(-30.0)
    for i in range(500):  # 10 s after moving away
        model.feed(-30.0 if i % 12 == 0 else -42.0)
    assert model.reference_dbfs is not None
    followed = model.reference_dbfs <= -36.0
    assert followed == (lost_fraction is None), model.reference_dbfs

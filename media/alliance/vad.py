"""Frame-level voice activity for one participant's audio track.

webrtcvad alone is a spectral/pitch classifier with no notion of the room it is in: steady
fans, hiss and mains hum regularly fool it, and it is level-blind, so it cannot tell a quiet
speaker from a noisy room. We therefore require two independent opinions for a speech frame:

* webrtcvad says the frame *sounds like* voice, and
* the frame's energy in the speech band (150 Hz–4 kHz, Hann-windowed FFT) stands clearly
  above this participant's own adaptive noise floor, and within a speaker-like dynamic
  range of their recent speech peak.

Measuring energy in the speech band rather than over the whole frame is what makes the gate
work in real rooms: mains hum and rumble (brown noise) carry most of their energy below
150 Hz and fluctuate strongly from one 20 ms frame to the next, and white hiss spreads most
of its energy above 4 kHz; in-band, the same noise is both weaker and steadier.

The noise floor is a causal tracker of frame RMS in dBFS that falls fast (it follows the
quietest frames, i.e. the pauses between words) and rises slowly while the level moves like
speech (a long monologue must not drag it up), but quickly while the level is steady the
way a room is (a fan switched on is learned within a few seconds).
A small hysteresis keeps the detector in "speech" for weaker frames once speech has started,
so word endings are not chopped; the signal engine's bridging handles the rest.

Silero VAD (media/alliance/silero.py) can add a third opinion (``VadTuning.voice_model``,
``SILERO_ASSIST``): where noise masks quiet speech (a speaker who moved away, soft recorded
voices), frames Silero is sure of need only stand above the floor, not a full margin. It
recovers talk the gate loses in noise for about five times the rest of the detector's CPU
(+0.015 CPU s/s per session, within the 0.03 budget); it is the default, ``WEBRTC_ONLY``
is the fallback (docs/silero.md has the measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

from media.alliance.silero import SileroTrack, silero_model

__all__ = [
    "SILERO_ASSIST",
    "SUPPORTED_FRAME_MS",
    "SUPPORTED_SAMPLE_RATES",
    "WEBRTC_ONLY",
    "FrameFeatures",
    "VadTuning",
    "VoiceActivityDetector",
    "downmix",
    "frame_dbfs",
    "voice_tuning",
]

SUPPORTED_SAMPLE_RATES = (8000, 16000, 32000, 48000)
SUPPORTED_FRAME_MS = (10, 20, 30)

#: dBFS reported for digital silence; below anything a real microphone produces.
SILENCE_DBFS = -120.0
_FULL_SCALE_SQ = 32768.0 * 32768.0


def frame_dbfs(frame: np.ndarray) -> float:
    """RMS level of an int16 frame in dBFS (full-scale sine ≈ -3 dBFS).

    All-zero frames return ``SILENCE_DBFS`` instead of ``-inf`` so the value can be compared,
    averaged and serialised without special cases.
    """
    if frame.size == 0:
        return SILENCE_DBFS
    samples = frame.astype(np.float64, copy=False).ravel()
    mean_sq = float(np.dot(samples, samples)) / samples.size
    if mean_sq <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_sq / _FULL_SCALE_SQ))


def downmix(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved (or ``(channels, n)``/``(1, n*channels)``) int16 audio → mono int16.

    aiortc hands out packed s16 frames shaped ``(1, samples*channels)``; averaging the
    channels (rather than taking the left one) keeps a one-sided headset microphone audible.
    """
    flat = np.asarray(samples).reshape(-1)
    if channels == 1:
        return flat.astype(np.int16, copy=False)
    usable = flat.size - flat.size % channels
    mixed: np.ndarray = flat[:usable].reshape(-1, channels).astype(np.int32).sum(axis=1)
    return (mixed // channels).astype(np.int16)


@dataclass(frozen=True, slots=True)
class FrameFeatures:
    """What one frame looked like to the detector, kept so that a later stage that sees both
    participants (media.alliance.attribution) can overrule the verdict: a frame that *sounds*
    like speech may be the other person leaking back from the loudspeaker, or a TV."""

    #: The detector's own verdict (voice-like and clearly above this mic's noise floor).
    speech: bool
    #: Speech-band (150 Hz–4 kHz) level, dBFS.
    level_dbfs: float
    #: Noise floor and the margin above it this frame needed to count as speech, dB.
    floor_dbfs: float
    margin_db: float
    #: Mean-square power (full scale = 1) per analysis band (the detector's
    #: ``band_edges_hz``); the bands below 4 kHz add up to ``level_dbfs``.
    bands: np.ndarray
    #: Silero's speech probability for the frame (0 without Silero).
    voice_prob: float = 0.0


@dataclass(frozen=True)
class VadTuning:
    """Knobs of the energy gate; defaults were tuned on espeak-ng speech at −15…−35 dBFS with
    white, pink, brown noise and mains hum around −45 dBFS (see tests/fixtures)."""

    #: A frame must stand ``margin_base_db + margin_per_spread_db × spread`` above the noise
    #: floor to *start* speech, where ``spread`` is how far noise frames typically sit above
    #: the floor: steady hiss or hum allows a small margin (quiet speakers are caught), while
    #: rumble, whose 20 ms level swings by ±5 dB, needs a large one.
    margin_base_db: float = 2.5
    margin_per_spread_db: float = 2.8
    margin_min_db: float = 3.0
    margin_max_db: float = 12.0
    #: Once in speech, a frame may be this much weaker and still continue it (hysteresis
    #: against chopped word endings), but never closer than ``hold_min_db`` to the floor.
    hold_drop_db: float = 3.0
    hold_min_db: float = 2.0
    #: Smoothing of the spread estimate (time constant in seconds) and its starting value.
    spread_tau_s: float = 2.0
    initial_spread_db: float = 2.0
    #: Frames quieter than this are never speech, whatever webrtcvad thinks (dither, leakage).
    absolute_min_dbfs: float = -65.0
    #: How fast the floor may rise while frames are above it (dB per second)…
    rise_db_per_s: float = 1.5
    #: …and while the level is steady (mean frame-to-frame wander under ``steady_dev_db``
    #: over about ``steady_tau_s``): speech swings by 5-10 dB per syllable, noise does not.
    steady_rise_db_per_s: float = 8.0
    steady_dev_db: float = 1.0
    steady_tau_s: float = 0.5
    #: Fraction of the gap closed per frame when a frame is below the floor.
    fall_fraction: float = 0.3
    #: For the first seconds the floor rises faster, so a noisy room is learned quickly.
    warmup_s: float = 2.0
    warmup_rise_db_per_s: float = 15.0
    #: The floor never goes below this (digital silence would otherwise pin it at -120).
    floor_min_dbfs: float = -90.0
    #: The floor starts at the first frame's level but no higher than this, so a person who
    #: talks from the very first frame is not taken for the room.
    initial_floor_max_dbfs: float = -55.0
    #: Speech frames lie within this range of the speaker's recent peak; quieter frames are
    #: reverberation tails and breath, not talk (matters when there is no noise floor).
    dynamic_range_db: float = 35.0
    #: While in speech and clearly above the floor, keep reporting speech for this many
    #: frames after webrtcvad stops agreeing (weak word endings, fricatives).
    hangover_frames: int = 2
    #: How fast the remembered speech peak fades when the speaker gets quieter.
    peak_decay_db_per_s: float = 2.0
    #: Speech band used for the energy gate.
    band_low_hz: float = 150.0
    band_high_hz: float = 4000.0
    #: Analysis bands for attribution: the gate's band split in ``bands_below`` bands of
    #: equal width on a log scale (at least two FFT bins each), plus ``bands_above`` up to
    #: ``analysis_high_hz`` (a loudspeaker's echo and a TV reach past 4 kHz).
    bands_below: int = 16
    bands_above: int = 2
    analysis_high_hz: float = 6000.0
    #: Which model says "this sounds like voice" behind the energy gate: ``webrtc`` alone,
    #: ``silero`` alone (media/alliance/silero.py, in numpy), or ``either`` (the
    #: default): Silero also accepts the frames that the gate passes and webrtcvad rejects.
    voice_model: Literal["webrtc", "silero", "either"] = "either"
    #: Silero's probability that starts speech, and the lower one that continues it.
    silero_threshold: float = 0.5
    silero_hold_threshold: float = 0.35
    #: When Silero is this sure, a frame needs only ``silero_margin_db`` above the floor
    #: (and to lie within ``silero_range_db`` of the peak) instead of the usual margin and
    #: range (None: the usual ones). Silero hears speech under the margin that webrtcvad
    #: cannot (measured: it alone, as a replacement or as a rescuer of webrtcvad's
    #: rejections, changes nothing or loses talk; what it adds is this).
    silero_confident: float = 0.8
    silero_margin_db: float | None = 0.0
    silero_range_db: float | None = 45.0
    #: Word ends under the noise: after attribution (``ParticipantAudio.tick``), a run of
    #: the owner's speech is carried through at most ``carry_frames`` frames that the
    #: detector rejected while Silero still hears voice (``carry_probability``) and the
    #: level has not sunk ``carry_floor_db`` under the floor. After attribution, so these
    #: quiet frames neither teach the level model nor get vetoed for being quiet.
    carry_frames: int = 3
    carry_probability: float = 0.5
    carry_floor_db: float = -2.0


#: Silero as the measured winner uses it (the default): a rescuer of webrtcvad's rejections
#: that also lets frames it is sure of through down to the noise floor and 45 dB under the
#: peak. Measured in docs/silero.md: drift 6 -> 3 dialogues of 10 failing, real voices
#: 4 -> 2, everything combined 9 -> 4, for ~+0.015 CPU s/s per session.
SILERO_ASSIST = VadTuning()
#: webrtcvad alone (the setting ``silero_assist = false``).
WEBRTC_ONLY = VadTuning(voice_model="webrtc", silero_margin_db=None, silero_range_db=None)


def voice_tuning(silero_assist: bool) -> VadTuning:
    """The live path's and ``rapport analyze``'s tuning for the ``silero_assist`` setting.

    With the assist it loads Silero's model (once per process) here, so a missing
    model file raises ``SileroUnavailable`` saying so where the setting is
    read, not when the first session opens."""
    if not silero_assist:
        return WEBRTC_ONLY
    silero_model()
    return SILERO_ASSIST


class VoiceActivityDetector:
    """Per-participant speech/non-speech decision on fixed-size mono int16 frames.

    Stateful (noise floor, hysteresis, webrtcvad's own adaptation), so use exactly one
    instance per participant track and feed it frames in order.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        frame_ms: int = 20,
        aggressiveness: int = 2,
        tuning: VadTuning | None = None,
    ) -> None:
        if sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SUPPORTED_SAMPLE_RATES}")
        if frame_ms not in SUPPORTED_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {SUPPORTED_FRAME_MS}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.tuning = tuning or VadTuning()
        self._vad = webrtcvad.Vad(aggressiveness)
        if self.tuning.voice_model not in ("webrtc", "silero", "either"):
            raise ValueError(
                f"voice_model must be webrtc, silero or either, not {self.tuning.voice_model!r}"
            )
        # Silero's model hears 16 kHz: at rates it cannot take (8 kHz) the default ``either``
        # falls back to webrtcvad alone; ``silero`` alone raises. The live path is 48 kHz.
        use_silero = self.tuning.voice_model == "silero" or (
            self.tuning.voice_model == "either" and sample_rate % 16000 == 0
        )
        self._silero = SileroTrack(sample_rate) if use_silero else None
        #: Silero's probability for the newest frame (0 when it is not used).
        self.last_silero = 0.0
        frame_s = frame_ms / 1000.0
        self._rise = self.tuning.rise_db_per_s * frame_s
        self._warmup_rise = self.tuning.warmup_rise_db_per_s * frame_s
        self._steady_rise = self.tuning.steady_rise_db_per_s * frame_s
        self._steady_alpha = min(1.0, frame_s / self.tuning.steady_tau_s)
        self._level_avg: float | None = None
        self._level_dev = self.tuning.steady_dev_db * 2
        self._warmup_frames = round(self.tuning.warmup_s / frame_s)
        self._peak_decay = self.tuning.peak_decay_db_per_s * frame_s
        self._spread_alpha = min(1.0, frame_s / self.tuning.spread_tau_s)
        self._spread = self.tuning.initial_spread_db
        self._frames_seen = 0
        self._floor: float | None = None
        self._peak = SILENCE_DBFS
        self._in_speech = False
        self.last_dbfs = SILENCE_DBFS
        self._window = np.hanning(self.frame_samples).astype(np.float64)
        bin_hz = sample_rate / self.frame_samples
        self._band = slice(
            max(1, int(np.ceil(self.tuning.band_low_hz / bin_hz))),
            int(self.tuning.band_high_hz / bin_hz) + 1,
        )
        # Scale so a band-limited signal reads the same as frame_dbfs would give it.
        self._band_scale = 2.0 / (self.frame_samples * float(np.dot(self._window, self._window)))
        self._band_scale_fs = self._band_scale / _FULL_SCALE_SQ
        bins = self.frame_samples // 2 + 1
        self._edges = _band_edges(
            self._band.start,
            min(bins, self._band.stop),
            min(bins, int(self.tuning.analysis_high_hz / bin_hz) + 1),
            self.tuning.bands_below,
            self.tuning.bands_above,
        )
        self.n_bands = len(self._edges) - 1
        #: Bands wholly inside the gate's speech band (they sum to its level).
        self.n_gate_bands = int(np.searchsorted(self._edges, min(bins, self._band.stop)))
        self.band_edges_hz = tuple(float(e * bin_hz) for e in self._edges)
        self._analysis = slice(self._edges[0], self._edges[-1])
        self._reduce_at = np.asarray(self._edges[:-1], dtype=np.intp) - self._edges[0]
        self._hang = 0

    @property
    def noise_floor_dbfs(self) -> float | None:
        """Current noise-floor estimate (None before the first frame)."""
        return self._floor

    def reset(self) -> None:
        """Forget the room: call when the participant's audio source changes (new device)."""
        self._frames_seen = 0
        self._floor = None
        self._level_avg = None
        self._level_dev = self.tuning.steady_dev_db * 2
        self._peak = SILENCE_DBFS
        self._spread = self.tuning.initial_spread_db
        self._in_speech = False
        self._hang = 0
        if self._silero is not None:
            self._silero.reset()

    @property
    def onset_margin_db(self) -> float:
        """Current margin above the noise floor needed to start speech."""
        t = self.tuning
        margin = t.margin_base_db + t.margin_per_spread_db * self._spread
        return min(t.margin_max_db, max(t.margin_min_db, margin))

    def band_dbfs(self, frame: np.ndarray) -> float:
        """Speech-band (150 Hz–4 kHz by default) level of a frame in dBFS."""
        samples = frame.astype(np.float64, copy=False).ravel()
        if not samples.any():
            return SILENCE_DBFS
        spectrum = np.fft.rfft(samples * self._window)[self._band]
        power = float(np.dot(spectrum.real, spectrum.real) + np.dot(spectrum.imag, spectrum.imag))
        mean_sq = power * self._band_scale
        if mean_sq <= 0.0:
            return SILENCE_DBFS
        return max(SILENCE_DBFS, 10.0 * math.log10(mean_sq / _FULL_SCALE_SQ))

    def is_speech(self, frame: np.ndarray) -> bool:
        """Classify one frame of exactly ``frame_samples`` mono int16 samples."""
        return self.analyze(frame).speech

    @property
    def silero_track(self) -> SileroTrack | None:
        """Silero's state for this track (None with webrtcvad alone): ``ParticipantAudio``
        runs both tracks' frames through the model at once and hands ``analyze`` the result."""
        return self._silero

    def analyze(self, frame: np.ndarray, silero: float | None = None) -> FrameFeatures:
        """Classify one frame and return the verdict with the evidence behind it.

        ``silero``: Silero's probability for this frame, already computed by
        ``silero_probabilities`` from this detector's ``silero_track``; None runs it here."""
        if frame.shape[-1] != self.frame_samples or frame.size != self.frame_samples:
            raise ValueError(f"expected {self.frame_samples} mono samples, got shape {frame.shape}")
        samples = frame.astype(np.float64, copy=False).ravel()
        if samples.any():
            spectrum = np.fft.rfft(samples * self._window)[self._analysis]
            power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
            bands = np.add.reduceat(power, self._reduce_at) * self._band_scale_fs
            mean_sq = float(bands[: self.n_gate_bands].sum())
            level = max(SILENCE_DBFS, 10.0 * math.log10(mean_sq)) if mean_sq > 0 else SILENCE_DBFS
        else:
            bands = np.zeros(self.n_bands)
            level = SILENCE_DBFS
        self.last_dbfs = level
        floor = self._update_floor(level)
        tuning = self.tuning
        onset = self.onset_margin_db
        self._peak = max(self._peak - self._peak_decay, floor + onset)
        margin = max(tuning.hold_min_db, onset - tuning.hold_drop_db) if self._in_speech else onset
        if not self._in_speech and level < floor + onset:
            # A noise-like frame: learn how far the room's noise wanders above the floor.
            self._spread += (max(0.0, level - floor) - self._spread) * self._spread_alpha
        # webrtcvad sees every frame, even ones the energy gate rejects: it adapts its own
        # noise and speech models continuously, and feeding it only loud frames teaches it
        # that speech is the background.
        pcm = np.ascontiguousarray(frame, dtype=np.int16).tobytes()
        dynamic_range = tuning.dynamic_range_db
        voiced = bool(self._vad.is_speech(pcm, self.sample_rate))
        if self._silero is not None:
            # Silero, too, sees every frame: it is recurrent.
            prob = self._silero.push(frame) if silero is None else silero
            self.last_silero = prob
            needed = tuning.silero_hold_threshold if self._in_speech else tuning.silero_threshold
            heard = prob >= needed
            voiced = heard if tuning.voice_model == "silero" else voiced or heard
            if prob >= tuning.silero_confident:
                if tuning.silero_margin_db is not None:
                    margin = min(margin, tuning.silero_margin_db)
                if tuning.silero_range_db is not None:
                    dynamic_range = max(dynamic_range, tuning.silero_range_db)
        if (
            level <= tuning.absolute_min_dbfs
            or level < floor + margin
            or level < self._peak - dynamic_range
        ):
            self._in_speech = False
            return FrameFeatures(False, level, floor, margin, bands, self.last_silero)
        if voiced:
            self._peak = max(self._peak, level)
            self._hang = tuning.hangover_frames
        elif self._in_speech and self._hang > 0:
            self._hang -= 1
            voiced = True
        self._in_speech = voiced
        return FrameFeatures(voiced, level, floor, margin, bands, self.last_silero)

    def _update_floor(self, level: float) -> float:
        """Advance the noise-floor tracker by one frame and return the floor *before* it
        absorbs this frame's rise, so a loud onset is judged against the room, not itself."""
        tuning = self.tuning
        self._frames_seen += 1
        avg = level if self._level_avg is None else self._level_avg
        self._level_dev += (abs(level - avg) - self._level_dev) * self._steady_alpha
        self._level_avg = avg + (level - avg) * self._steady_alpha
        floor = self._floor
        if floor is None:
            floor = min(max(level, tuning.floor_min_dbfs), tuning.initial_floor_max_dbfs)
            self._floor = floor
            return floor
        previous = floor
        if level < floor:
            floor += (level - floor) * tuning.fall_fraction
        else:
            if self._frames_seen <= self._warmup_frames:
                rise = self._warmup_rise
            elif self._level_dev < tuning.steady_dev_db:
                rise = self._steady_rise
            else:
                rise = self._rise
            floor = min(level, floor + rise)
        self._floor = max(floor, tuning.floor_min_dbfs)
        return min(previous, self._floor)


def _band_edges(low: int, gate_high: int, high: int, below: int, above: int) -> list[int]:
    """FFT-bin edges: ``below`` log-spaced bands over [low, gate_high), ``above`` over
    [gate_high, high); bands narrower than two bins are merged into their neighbour."""
    edges = [low]
    for stop, count in ((gate_high, below), (high, above)):
        start = edges[-1]
        if stop <= start or count <= 0:
            continue
        for e in np.geomspace(start, stop, count + 1)[1:]:
            edge = min(stop, round(float(e)))
            if edge - edges[-1] >= 2 or edge == stop:
                if edge == stop and edge - edges[-1] < 2 and len(edges) > 1 and edges[-1] != start:
                    edges[-1] = edge
                elif edge > edges[-1]:
                    edges.append(edge)
    return edges

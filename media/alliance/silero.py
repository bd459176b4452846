"""Silero VAD as a second voice-activity opinion, on onnxruntime only.

webrtcvad is a small GMM on a few sub-band energies: it misses quiet speech that a trained
recurrent model still hears (the ends of words, a speaker who moved away from the
microphone, recorded human voices with breathy onsets). Silero's model is a small neural
network trained on thousands of hours of speech and noise, small enough (1.3 MB) to ship
with Rapport, so nothing is downloaded at run time.

The model file is ``media/alliance/data/silero_vad_16k_op15.onnx``, copied unchanged from the
``silero-vad`` 6.2.3 wheel (MIT licence beside it; sha256 ``7ed98ddb…8788e3``): the wheel
itself depends on torch, which Rapport does not need, so it is not a dependency; the model
runs on onnxruntime alone (a dependency: the assist is the default voice model, see
docs/silero.md).

The model takes 16 kHz audio in 512-sample chunks (32 ms) plus 64 samples of context and a
recurrent state; our frames are 48 kHz, 20 ms. Each track therefore keeps its own
decimating FIR state, a chunk buffer, the context and the recurrent state, and reports the
probability of the newest complete chunk. One ``InferenceSession`` (single-threaded, so it
is deterministic and its CPU stays on the calling thread) is shared by every track of the
process: ``run`` is thread-safe and the state lives outside the session.

Most of the cost is onnxruntime's fixed cost per ``run`` (a row costs ~60 µs, a call ~60 µs
more), so ``silero_probabilities`` takes a whole wake-up's frames of several tracks at
once: decimation and chunking once per track, then one ``run`` per chunk position with a
row per track (the state's batch axis). Rows never mix and each FIR output is its own dot
product, so the probabilities are the same however frames are cut or batched.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SILERO_MODEL_FILE",
    "SILERO_MODEL_SHA256",
    "SileroTrack",
    "SileroUnavailable",
    "silero_model_path",
    "silero_probabilities",
    "silero_session",
]

#: The 16 kHz model of the silero-vad 6.2.3 wheel (opset 15), shipped with Rapport.
SILERO_MODEL_FILE = "silero_vad_16k_op15.onnx"
SILERO_MODEL_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
_RATE = 16000
_CHUNK = 512
_CONTEXT = 64
_DECIMATE = 3  # 48 kHz -> 16 kHz
_SR = np.array(_RATE, dtype=np.int64)


class SileroUnavailable(RuntimeError):
    """onnxruntime is not installed, or the model file is missing."""


def silero_model_path() -> Path:
    """The ONNX model file shipped in media/alliance/data."""
    path = Path(__file__).resolve().parent / "data" / SILERO_MODEL_FILE
    if not path.is_file():
        raise SileroUnavailable(f"the Silero VAD model {path} is missing")
    return path


_lock = threading.Lock()


#: onnxruntime's official wheels carry telemetry (1DS on Linux since 2026): a persistent
#: device identifier and an event cache under ~/.cache/Microsoft/DeveloperTools, and an
#: uploader to Microsoft. A therapy server sends nothing anywhere and writes nothing it does
#: not need, so it is switched off, for the whole process, before onnxruntime is first
#: imported (the library latches the choice at initialisation). Forced, not defaulted: no
#: environment may turn it back on.
_TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1"}


def _import_onnxruntime() -> Any:
    os.environ.update(_TELEMETRY_OFF)
    import onnxruntime as ort

    # Windows builds report through ETW instead; this turns those events off too.
    ort.disable_telemetry_events()
    return ort


@cache
def _session() -> Any:
    try:
        ort = _import_onnxruntime()
    except ImportError as exc:
        raise SileroUnavailable(
            "Silero VAD needs onnxruntime (a dependency of rapport: pip install onnxruntime, "
            "or RAPPORT_SILERO_ASSIST=false for webrtcvad alone)"
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    path = silero_model_path()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SileroUnavailable(
            f"onnxruntime cannot load the Silero VAD model {path}: {exc}"
        ) from exc


def silero_session() -> Any:
    """The process's one ``InferenceSession`` (loaded on first use, then shared by every
    track: ``run`` is thread-safe). Raises ``SileroUnavailable`` with the reason if
    onnxruntime or the model is missing, so a server can check at start-up."""
    with _lock:
        return _session()


def _lowpass(taps: int = 31, cutoff_hz: float = 7000.0, rate: int = 48000) -> np.ndarray:
    """Hann-windowed sinc low-pass for decimating 48 kHz to 16 kHz: flat through the speech
    band, −40 dB or more past 9 kHz where aliases would fold back under 7 kHz."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff_hz / rate * n) * np.hanning(taps + 2)[1:-1]
    taps_out: np.ndarray = (h / h.sum()).astype(np.float32)
    return taps_out


_FIR = _lowpass()


class SileroTrack:
    """Silero's speech probability for one participant's track, fed 48 kHz int16 frames.

    Stateful like the model (recurrent state, context, the FIR's history): one per track,
    frames in order. Deterministic: the same frames give the same probabilities, whether they
    come one by one (``push``) or a wake-up's worth at a time, alone or beside another
    track's (``silero_probabilities``).
    """

    def __init__(self, sample_rate: int = 48000) -> None:
        if sample_rate % _RATE:
            raise ValueError(f"sample_rate must be a multiple of {_RATE}, got {sample_rate}")
        self._step = sample_rate // _RATE
        silero_session()  # loads the model (once per process) or says why it cannot
        self._fir = _FIR if self._step == _DECIMATE else _lowpass(rate=sample_rate)
        self._fir_reversed = np.ascontiguousarray(self._fir[::-1])
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far (a new device or connection)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        # The context (the previous chunk's last 64 samples) followed by the samples not yet
        # in a whole chunk: the next chunk's model input is this buffer's first 576 samples.
        self._buffer = np.zeros(_CONTEXT, dtype=np.float32)
        self._history = np.zeros(self._fir.size - 1, dtype=np.float32)
        self._seen = 0  # input samples since the reset
        #: Probability that the newest complete 32 ms chunk is speech (0 before the first).
        self.probability = 0.0

    def push(self, frame: np.ndarray) -> float:
        """Add one frame of mono int16 samples; returns the newest chunk's probability."""
        samples = np.asarray(frame).reshape(-1)
        return float(silero_probabilities([self], [samples], [(samples.size,)])[0][-1])

    def _decimate(self, pcm: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 16 kHz samples of ``pcm`` (one call for a whole wake-up's frames) and how many
        of them exist at each of ``bounds`` (cumulative input sample counts)."""
        step = self._step
        seen = self._seen
        x = pcm.astype(np.float32) * np.float32(1.0 / 32768.0)
        # Output k is the filter's value at input sample k·step (the first sample is 0):
        # after n input samples there are ceil(n / step) of them.
        counts = (seen + bounds + step - 1) // step - (seen + step - 1) // step
        self._seen = seen + x.size
        if step == 1:
            return x, counts
        padded = np.concatenate([self._history, x])
        self._history = padded[padded.size - self._history.size :]
        # Only every step-th output is kept, so only those are computed: a strided view of
        # the input (no copy) times the taps; each row is its own dot product, so the values
        # do not depend on how many frames come at once.
        taps = self._fir.size
        phase = -seen % step
        count = int(counts[-1]) if counts.size else 0
        stride = padded.strides[0]
        windows = np.lib.stride_tricks.as_strided(
            padded[phase:], (count, taps), (stride * step, stride), writeable=False
        )
        low: np.ndarray = windows @ self._fir_reversed
        return low, counts


def silero_probabilities(
    tracks: Sequence[SileroTrack],
    pcm: Sequence[np.ndarray],
    frames: Sequence[Sequence[int] | tuple[int, ...]],
) -> list[np.ndarray]:
    """Feed each track its mono int16 samples and return, per track, the newest chunk's
    probability at the end of each of its frames (``frames``: their sizes, in order).

    The tracks' chunks go through the model together, one ``run`` per chunk position with a
    row per track that has a chunk there: the model's state has a batch axis and rows never
    mix, and one call for two rows costs far less than two calls (fixed per-call overhead).
    """
    chunk_inputs: list[np.ndarray] = []
    chunk_ends: list[np.ndarray] = []
    for track, samples, sizes in zip(tracks, pcm, frames, strict=True):
        bounds = np.cumsum(np.asarray(sizes, dtype=np.int64))
        low, counts = track._decimate(np.asarray(samples).reshape(-1), bounds)
        held = track._buffer.size - _CONTEXT
        buffer = np.concatenate([track._buffer, low]) if low.size else track._buffer
        n = (buffer.size - _CONTEXT) // _CHUNK
        stride = buffer.strides[0]
        # Chunk i's input is its 512 samples preceded by the 64 before them (the context).
        chunk_inputs.append(
            np.lib.stride_tricks.as_strided(
                buffer, (n, _CONTEXT + _CHUNK), (stride * _CHUNK, stride), writeable=False
            )
        )
        track._buffer = buffer[n * _CHUNK :].copy()
        chunk_ends.append((held + counts) // _CHUNK)  # chunks complete at each frame's end
    outputs = [np.empty(inputs.shape[0], dtype=np.float32) for inputs in chunk_inputs]
    session = silero_session()
    for k in range(max((inputs.shape[0] for inputs in chunk_inputs), default=0)):
        rows = [i for i, inputs in enumerate(chunk_inputs) if inputs.shape[0] > k]
        if len(rows) == 1:
            (i,) = rows
            model_in = np.ascontiguousarray(chunk_inputs[i][k : k + 1])
            state = tracks[i]._state
        else:
            model_in = np.stack([chunk_inputs[i][k] for i in rows])
            state = np.concatenate([tracks[i]._state for i in rows], axis=1)
        out, state_n = session.run(None, {"input": model_in, "state": state, "sr": _SR})
        for row, i in enumerate(rows):
            tracks[i]._state = np.ascontiguousarray(state_n[:, row : row + 1])
            outputs[i][k] = out[row, 0]
    result: list[np.ndarray] = []
    for track, probs, ends in zip(tracks, outputs, chunk_ends, strict=True):
        before = np.float32(track.probability)
        per_frame = np.where(
            ends > 0, probs[np.maximum(ends - 1, 0)] if probs.size else before, before
        )
        if probs.size:
            track.probability = float(probs[-1])
        result.append(per_frame.astype(np.float64))
    return result

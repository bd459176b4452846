"""Silero VAD as a second voice-activity opinion, on onnxruntime only.

webrtcvad is a small GMM on a few sub-band energies: it misses quiet speech that a trained
recurrent model still hears (the ends of words, a speaker who moved away from the
microphone, recorded human voices with breathy onsets). Silero's model is a small neural
network trained on thousands of hours of speech and noise, small enough (1.3 MB) to ship
with Rapport, so nothing is downloaded at run time.

The model file is ``media/alliance/data/silero_vad_16k_op15.onnx``, copied unchanged from the
``silero-vad`` 6.2.3 wheel (MIT licence beside it; sha256 ``7ed98ddb…8788e3``): the wheel
itself depends on torch, which Rapport does not need, so it is not a dependency; the model
runs on onnxruntime alone, which is optional (``pip install onnxruntime``; the test extra
has it) because webrtcvad stays the default voice model (see docs/silero.md).

The model takes 16 kHz audio in 512-sample chunks (32 ms) plus 64 samples of context and a
recurrent state; our frames are 48 kHz, 20 ms. Each track therefore keeps its own
decimating FIR state, a chunk buffer, the context and the recurrent state, and reports the
probability of the newest complete chunk. One ``InferenceSession`` (single-threaded, so it
is deterministic and its CPU stays on the calling thread) is shared by every track of the
process: ``run`` is thread-safe and the state lives outside the session.
"""

from __future__ import annotations

import threading
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
]

#: The 16 kHz model of the silero-vad 6.2.3 wheel (opset 15), shipped with Rapport.
SILERO_MODEL_FILE = "silero_vad_16k_op15.onnx"
SILERO_MODEL_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
_RATE = 16000
_CHUNK = 512
_CONTEXT = 64
_DECIMATE = 3  # 48 kHz -> 16 kHz


class SileroUnavailable(RuntimeError):
    """onnxruntime (optional) is not installed, or the model file is missing."""


def silero_model_path() -> Path:
    """The ONNX model file shipped in media/alliance/data."""
    path = Path(__file__).resolve().parent / "data" / SILERO_MODEL_FILE
    if not path.is_file():
        raise SileroUnavailable(f"the Silero VAD model {path} is missing")
    return path


_lock = threading.Lock()


@cache
def _session() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise SileroUnavailable(
            "Silero VAD needs onnxruntime, which is optional: pip install onnxruntime"
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(silero_model_path()), options, providers=["CPUExecutionProvider"]
    )


def _shared_session() -> Any:
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
    frames in order. Deterministic: the same frames give the same probabilities.
    """

    def __init__(self, sample_rate: int = 48000) -> None:
        if sample_rate % _RATE:
            raise ValueError(f"sample_rate must be a multiple of {_RATE}, got {sample_rate}")
        self._step = sample_rate // _RATE
        self._session = _shared_session()
        self._fir = _FIR if self._step == _DECIMATE else _lowpass(rate=sample_rate)
        self._fir_reversed = np.ascontiguousarray(self._fir[::-1])
        self._sr = np.array(_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far (a new device or connection)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)
        self._history = np.zeros(self._fir.size - 1, dtype=np.float32)
        self._phase = 0
        self._pending = np.zeros(0, dtype=np.float32)
        #: Probability that the newest complete 32 ms chunk is speech (0 before the first).
        self.probability = 0.0

    def push(self, frame: np.ndarray) -> float:
        """Add one frame of mono int16 samples; returns the newest chunk's probability."""
        x = np.asarray(frame).reshape(-1).astype(np.float32) * (1.0 / 32768.0)
        if self._step == 1:
            low = x
        else:
            padded = np.concatenate([self._history, x])
            self._history = padded[padded.size - self._history.size :]
            # Only every step-th output is kept, so only those are computed: a strided view
            # of the input (no copy) times the taps. The phase carries across frames.
            taps = self._fir.size
            count = (padded.size - taps - self._phase) // self._step + 1
            stride = padded.strides[0]
            windows = np.lib.stride_tricks.as_strided(
                padded[self._phase :], (count, taps), (stride * self._step, stride), writeable=False
            )
            low = windows @ self._fir_reversed
            self._phase = (self._phase - x.size) % self._step
        buffer = np.concatenate([self._pending, low]) if self._pending.size else low
        start = 0
        while buffer.size - start >= _CHUNK:
            chunk = buffer[start : start + _CHUNK]
            start += _CHUNK
            model_in = np.concatenate([self._context, chunk])[np.newaxis, :]
            out, state = self._session.run(
                None, {"input": model_in, "state": self._state, "sr": self._sr}
            )
            self._state = state
            self._context = chunk[-_CONTEXT:].copy()
            self.probability = float(out[0, 0])
        self._pending = buffer[start:].copy()
        return self.probability

"""Silero VAD as a second voice-activity opinion, in numpy.

webrtcvad is a small GMM on a few sub-band energies: it misses quiet speech that a trained
recurrent model still hears (the ends of words, a speaker who moved away from the
microphone, recorded human voices with breathy onsets). Silero's model is a small neural
network trained on thousands of hours of speech and noise, small enough (1.3 MB) to ship
with Rapport, so nothing is downloaded at run time.

The model file is ``media/alliance/data/silero_vad_16k_op15.onnx``, copied unchanged from the
``silero-vad`` 6.2.3 wheel (MIT licence beside it; sha256 ``7ed98ddb…8788e3``). Its weights,
unchanged, are also stored as plain arrays in ``silero_vad_16k_weights.npz`` (derived by
``python -m tests.fixtures.silero_weights``), and this module runs the network on them in
numpy: an STFT, four convolutions and one LSTM step per 32 ms chunk. onnxruntime ran it
before, and tests/test_vad_silero.py still checks this code against onnxruntime running the
ONNX file (probabilities within 1e-5, no threshold crossed differently).

Why not onnxruntime: the cost per session counts. The network is tiny, and onnxruntime's
fixed cost per ``run`` (its graph walk, with ``If`` nodes around the recurrent part) is most
of it; the state forbids batching a track's chunks in time, so a session paid one ``run``
per 32 ms. Here the convolutional front end has no state, so it runs once per wake-up over
every chunk of every track (a few small matrix products), and only the LSTM step, two
128-wide matrix-vector products, runs per chunk position: about half the CPU of onnxruntime
in a tight loop, and no second runtime in the server process (docs/silero.md).

The model takes 16 kHz audio in 512-sample chunks (32 ms) plus 64 samples of context and a
recurrent state; our frames are 48 kHz, 20 ms. Each track therefore keeps its own
decimating FIR state, a chunk buffer, the context and the recurrent state, and reports the
probability of the newest complete chunk. Rows never mix and each FIR output is its own dot
product, so the probabilities are the same however frames are cut or batched.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "SILERO_MODEL_FILE",
    "SILERO_MODEL_SHA256",
    "SILERO_WEIGHTS_FILE",
    "SileroModel",
    "SileroTrack",
    "SileroUnavailable",
    "silero_model",
    "silero_model_path",
    "silero_probabilities",
    "silero_weights_path",
]

#: The 16 kHz model of the silero-vad 6.2.3 wheel (opset 15), shipped with Rapport.
SILERO_MODEL_FILE = "silero_vad_16k_op15.onnx"
SILERO_MODEL_SHA256 = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
#: The same model's weights as numpy arrays (tests/fixtures/silero_weights.py).
SILERO_WEIGHTS_FILE = "silero_vad_16k_weights.npz"
_RATE = 16000
_CHUNK = 512
_CONTEXT = 64
_DECIMATE = 3  # 48 kHz -> 16 kHz
_N_FFT = 256
_HOP = 128
_HIDDEN = 128


class SileroUnavailable(RuntimeError):
    """The model's weights are missing or unreadable."""


def _data_file(name: str) -> Path:
    path = Path(__file__).resolve().parent / "data" / name
    if not path.is_file():
        raise SileroUnavailable(f"the Silero VAD model file {path} is missing")
    return path


def silero_model_path() -> Path:
    """The ONNX model file shipped in media/alliance/data (the weights' source)."""
    return _data_file(SILERO_MODEL_FILE)


def silero_weights_path() -> Path:
    """The weights Rapport runs, derived unchanged from the ONNX file."""
    return _data_file(SILERO_WEIGHTS_FILE)


def _limit_blas_threads() -> None:
    """One BLAS thread for the process. The network's matrix products are tiny (a few
    hundred kFLOP); OpenBLAS still splits them over every core, and the second thread costs
    as much CPU as it saves wall time (measured: 41 µs of CPU for a 20 µs product on 2
    cores, 33 µs on one). A server's numpy work is all this small, and its cores belong to
    the media pipeline, so the limit is for the whole process, set once when the model loads."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class SileroModel:
    """Silero VAD's 16 kHz network on numpy, split where its state is.

    ``input_gates`` is everything before the recurrence: the chunk's magnitude spectrum (a
    256-point STFT with hop 128 over the chunk and its context, reflect-padded by 64; an FFT
    here, a convolution with DFT kernels in the ONNX graph), four
    3-tap convolutions with ReLU (strides 1, 2, 2, 1: four STFT frames become one 128-wide
    feature), and the LSTM's input projection. It has no state, so any number of chunks go
    through at once. ``step`` is the LSTM step (gates i, f, g, o, PyTorch's order) and the head
    (ReLU, a 1x1 convolution, a sigmoid), per chunk position, a row per track.
    """

    def __init__(self, path: Path) -> None:
        try:
            with np.load(path) as data:
                w = {key: np.asarray(data[key], dtype=np.float32) for key in data.files}
            # The model's STFT is a convolution whose kernels are a window times the cosines
            # (real parts, bins 0..128) and sines of a 256-point DFT: the same magnitudes come
            # from an FFT of the windowed frames, at a fraction of the cost. The window is
            # the DC kernel; the rest is checked, so other weights cannot slip through.
            basis = w["stft_basis"].astype(np.float64)
            self._window = w["stft_basis"][0].copy()
            n = np.arange(_N_FFT)
            angle = 2 * np.pi * np.outer(np.arange(_N_FFT // 2 + 1), n) / _N_FFT
            dft = np.concatenate([np.cos(angle), -np.sin(angle)]) * self._window
            if not np.allclose(basis, dft, rtol=0, atol=1e-5):
                raise ValueError("the STFT kernels are not a windowed DFT")
            self._convs = []
            for k, stride in enumerate((1, 2, 2, 1)):
                weight = w[f"enc{k}_w"]  # (out, in, 3) -> rows ordered tap-major, then input
                kernel = weight.transpose(2, 1, 0).reshape(-1, weight.shape[0])
                self._convs.append((np.ascontiguousarray(kernel), w[f"enc{k}_b"], stride))
            self._w_in = np.ascontiguousarray(w["lstm_w_ih"].T)  # (128, 512)
            self._w_rec = np.ascontiguousarray(w["lstm_w_hh"].T)  # (128, 512)
            self._bias = w["lstm_b_ih"] + w["lstm_b_hh"]
            self._head = np.ascontiguousarray(w["head_w"])
            self._head_bias = np.float32(w["head_b"][0])
        except (OSError, KeyError, ValueError) as exc:
            raise SileroUnavailable(f"cannot read the Silero VAD weights {path}: {exc}") from exc

    def input_gates(self, chunks: np.ndarray) -> np.ndarray:
        """``chunks``: (n, 576) float32, each a chunk after its 64 samples of context.
        Returns (n, 512): the LSTM's input gates for each, bias included."""
        n = chunks.shape[0]
        if n == 0:
            return np.zeros((0, 4 * _HIDDEN), dtype=np.float32)
        # Reflect padding of 64 on the right (the model's ``Pad``, mode reflect).
        padded = np.concatenate([chunks, chunks[:, -2 : -_CONTEXT - 2 : -1]], axis=1)
        frames_per_chunk = (padded.shape[1] - _N_FFT) // _HOP + 1
        stride_n, stride_t = padded.strides
        frames = np.lib.stride_tricks.as_strided(
            padded,
            (n, frames_per_chunk, _N_FFT),
            (stride_n, stride_t * _HOP, stride_t),
            writeable=False,
        )
        h = np.abs(np.fft.rfft(frames * self._window, axis=2))  # (n, frames, 129)
        for kernel, bias, stride in self._convs:  # channels last: (n, time, channels)
            steps, channels = h.shape[1], h.shape[2]
            out_steps = (steps - 1) // stride + 1
            edged = np.zeros((n, steps + 2, channels), dtype=np.float32)
            edged[:, 1:-1] = h
            end = stride * (out_steps - 1) + 1
            taps = np.concatenate([edged[:, j : j + end : stride] for j in range(3)], axis=2)
            h = np.maximum(taps.reshape(n * out_steps, 3 * channels) @ kernel + bias, 0.0)
            h = h.reshape(n, out_steps, -1)
        gates: np.ndarray = h[:, 0] @ self._w_in + self._bias
        return gates

    def step(
        self, input_gates: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One LSTM step for a row per track: (probabilities, new h, new c)."""
        gates = input_gates + h @ self._w_rec
        n = _HIDDEN
        sig = 1.0 / (1.0 + np.exp(-gates))  # the cell's candidate (3rd quarter) is tanh
        c_new = sig[:, n : 2 * n] * c + sig[:, :n] * np.tanh(gates[:, 2 * n : 3 * n])
        h_new = sig[:, 3 * n :] * np.tanh(c_new)
        logit = np.maximum(h_new, 0.0) @ self._head + self._head_bias
        probability: np.ndarray = 1.0 / (1.0 + np.exp(-logit))
        return probability, h_new, c_new


_lock = threading.Lock()


@cache
def _model() -> SileroModel:
    _limit_blas_threads()
    return SileroModel(silero_weights_path())


def silero_model() -> SileroModel:
    """The process's one model (loaded on first use, then shared by every track: it holds
    only weights; each track keeps its own state). Raises ``SileroUnavailable`` with the
    reason if the weights are missing, so a server can check at start-up."""
    with _lock:
        return _model()


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
        silero_model()  # loads the model (once per process) or says why it cannot
        self._fir = _FIR if self._step == _DECIMATE else _lowpass(rate=sample_rate)
        self._fir_reversed = np.ascontiguousarray(self._fir[::-1])
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far (a new device or connection)."""
        self._h = np.zeros(_HIDDEN, dtype=np.float32)  # the LSTM's state
        self._c = np.zeros(_HIDDEN, dtype=np.float32)
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

    The tracks' chunks go through the model together: the stateless front end in one batch,
    then one LSTM step per chunk position with a row per track that has a chunk there (rows
    never mix, so a track's probabilities do not depend on what it is batched with).
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
    # The stateless front end once over every chunk of every track; then the LSTM step per
    # chunk position, a row per track that has a chunk there.
    chunks = np.array([inputs.shape[0] for inputs in chunk_inputs], dtype=np.int64)
    longest = int(chunks.max(initial=0))
    probabilities = np.zeros((len(tracks), longest), dtype=np.float32)
    if longest:
        model = silero_model()
        gates = model.input_gates(np.concatenate(chunk_inputs))
        starts = np.cumsum(chunks) - chunks
        h = np.stack([track._h for track in tracks])
        c = np.stack([track._c for track in tracks])
        for k in range(longest):
            if chunks.min() > k:  # every track has a chunk here (the usual case)
                probabilities[:, k], h, c = model.step(gates[starts + k], h, c)
            else:
                rows = np.flatnonzero(chunks > k)
                p, h[rows], c[rows] = model.step(gates[starts[rows] + k], h[rows], c[rows])
                probabilities[rows, k] = p
        for i, track in enumerate(tracks):
            track._h, track._c = h[i].copy(), c[i].copy()
    outputs = [probabilities[i, :count] for i, count in enumerate(chunks.tolist())]
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

"""The one percentile definition (media/stats.py): numpy's default, used by every figure.

The benches (``server.bench``) and the event-loop lag sampler (``media.loops``) all rank by it.
"""

from __future__ import annotations

import numpy as np
import pytest

from media.loops import LoopLagSampler
from media.stats import percentile
from server.bench import signals
from server.bench import stats as bench_stats

ARRAYS = [
    [42.0],
    [3.0, 1.0, 2.0],
    [1.0, 2.0, 3.0, 4.0],
    [5.0, 5.0, 5.0, 1.0],
    [-3.5, 0.0, 12.25, 7.0, 7.0, 100.0],
    list(np.random.default_rng(7).lognormal(2.0, 0.8, 101)),
    list(np.random.default_rng(8).normal(0.0, 1.0, 1000)),
]
QUANTILES = [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]


@pytest.mark.parametrize("values", ARRAYS, ids=lambda v: f"n={len(v)}")
def test_matches_numpys_linear_percentile(values: list[float]) -> None:
    for q in QUANTILES:
        expected = float(np.percentile(values, q * 100, method="linear"))
        assert percentile(values, q) == pytest.approx(expected, rel=1e-12, abs=1e-12), q


def test_edges() -> None:
    assert percentile([], 0.5) is None
    assert percentile(iter([2.0, 1.0]), 0.5) == 1.5  # any iterable; need not be a sample
    with pytest.raises(ValueError):
        percentile([1.0], 95)  # a percent, not a quantile: refuse rather than mislabel


def test_every_bench_uses_it() -> None:
    assert bench_stats.percentile is percentile
    latencies = [120.0, 80.0, 95.0, 300.0, 101.0, 99.0, 87.0]
    summary = signals._summary(latencies, onsets=8)["speaking_latency_ms"]
    assert summary["p50"] == round(float(np.percentile(latencies, 50)), 1)
    assert summary["p95"] == round(float(np.percentile(latencies, 95)), 1)
    assert signals._summary([], onsets=3)["speaking_latency_ms"]["p95"] is None


def test_loop_lag_p99_uses_it() -> None:
    lag = LoopLagSampler(0.25, keep=1000)
    assert lag.p99_ms() == 0.0
    samples = [0.001 * i for i in range(1, 151)]  # 150 samples: the rank rules disagree here
    lag.samples.extend(samples)
    assert lag.p99_ms() == round(float(np.percentile(samples, 99)) * 1000, 2)

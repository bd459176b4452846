"""The one percentile definition behind every figure Rapport reports.

It lives in ``media`` (pure Python, no numpy) because ``media`` imports nothing from the
layers above it, while everything above may import it: the media workers' and the server's
event-loop lag (``media.loops``), and every benchmark figure (``server.bench.stats``
re-exports it for the benches). Three definitions had crept in (linear interpolation in the
relay bench, nearest rank plus ``statistics.median`` in the signals bench, ``int(0.99 * n)``
in the loop-lag sampler), so a "p99" from one place was not comparable with a "p99" from
another, and on small samples they differ by whole samples. All figures now use this one.

Definition: linear interpolation between the closest ranks, the same as numpy's default
(``method="linear"``, Hyndman & Fan type 7) and Excel's ``PERCENTILE.INC``. For sorted
values ``x[0..n-1]`` and ``q`` in [0, 1], the position ``h = (n - 1) * q`` falls between
``x[floor(h)]`` and ``x[ceil(h)]``; the result is the straight line between the two. So the
p50 is the usual median, p0 the minimum, p100 the maximum, and a result need not be one of
the samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0 ≤ q ≤ 1) of ``values``; None when there are none to rank."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

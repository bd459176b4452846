"""The benches' percentile: ``media.stats.percentile``, re-exported.

The definition (linear interpolation, numpy's default) lives in ``media/stats.py`` so that
``media`` itself (the event-loop lag its workers report) uses the same one as every bench
figure; ``media`` may not import ``server``, so the definition sits below both. The benches
import it from here, and this module adds nothing to it.
"""

from __future__ import annotations

from media.stats import percentile

__all__ = ["percentile"]

"""The aiortc release this package was validated against, and the helpers its checks share.

Kept free of any patching so that both halves of the package (the forwarding hooks and the
speed patches) can check the pin without loading each other.
"""

from __future__ import annotations

import inspect
from typing import Any

import aiortc

AIORTC_VERSION = "1.16.0"


def version_problems() -> list[str]:
    """The installed aiortc is not the pinned one: every private name here may have moved."""
    if aiortc.__version__ == AIORTC_VERSION:
        return []
    return [
        f"aiortc {aiortc.__version__} is installed; media/aiortc_compat patches internals of "
        f"aiortc {AIORTC_VERSION} only. Re-validate media/aiortc_compat against the new "
        "version (tests/test_forward.py) before changing the pin in pyproject.toml."
    ]


def source(obj: Any) -> str:
    """The source of ``obj``, or "" when there is none (the checks then report a mismatch)."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def missing(owner: str, *checks: tuple[str, str]) -> list[str]:
    """One problem per (needle, source) pair whose needle no longer is in the source."""
    return [
        f"{owner} no longer contains {needle!r}" for needle, where in checks if needle not in where
    ]

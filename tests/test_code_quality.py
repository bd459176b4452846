"""The code base stays typed and linted: mypy on our packages, ruff on everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_mypy_is_clean_on_our_packages() -> None:
    result = _run("mypy", "server", "signaling", "media")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", "server", "signaling", "media", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_flow_one_way() -> None:
    """server → signaling → media; media imports neither, signaling never imports server."""
    for package, forbidden in (("media", ("server", "signaling")), ("signaling", ("server",))):
        for path in (ROOT / package).glob("*.py"):
            for line in path.read_text().splitlines():
                stripped = line.strip()
                for name in forbidden:
                    assert not stripped.startswith((f"from {name}", f"import {name}")), (
                        f"{path.name} imports {name}: {stripped}"
                    )

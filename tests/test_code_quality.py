"""The code base stays typed and linted: mypy as pyproject.toml configures it, ruff on all."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_mypy_is_clean_as_configured() -> None:
    """No arguments: mypy checks exactly the packages (and strictness) [tool.mypy] sets."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", "server", "signaling", "media", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import in a file, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_imports_flow_one_way() -> None:
    """server → signaling → media; media imports neither, signaling never imports server."""
    for package, forbidden in (("media", ("server", "signaling")), ("signaling", ("server",))):
        for path in _sources(package):
            for line, module, _ in _imports(path):
                top = module.split(".")[0]
                assert top not in forbidden, f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_signaling_and_server_use_only_the_declared_media_api() -> None:
    """Outside ``media``, only ``from media import NAME`` with NAME in ``media.__all__``.

    The benchmark tooling (``server/bench``) drives aiortc peers of its own and may reach into
    ``media``'s subpackages; nothing else may.
    """
    import media

    declared = set(media.__all__)
    sources = _sources("signaling") + [
        p for p in _sources("server") if "bench" not in p.relative_to(ROOT).parts
    ]
    assert len(sources) > 20
    for path in sources:
        for line, module, names in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module == "media":
                assert names, f"{where}: import media (use from media import NAME)"
                undeclared = set(names) - declared
                assert not undeclared, f"{where}: {sorted(undeclared)} not in media.__all__"
            else:
                assert not module.startswith("media."), f"{where} imports {module}"


def test_declared_media_api_resolves() -> None:
    """Every declared name is importable, so the lazy table in media/__init__.py stays true."""
    import media

    for name in media.__all__:
        assert getattr(media, name) is not None, name

"""Snags a newcomer hit in their first hour (issue 14), each checked as they met it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.settings import usable_cores
from tests.server_process import REPO_ROOT, free_port

# Test-only packages (pyproject's [test] extra): absent from a runtime install.
TEST_ONLY = ("httpx", "pytest", "hypothesis", "playwright")
WITHOUT_TEST_PACKAGES = f"""
import importlib.abc, sys
class _RuntimeInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TEST_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (runtime install)", name=name)
        return None
sys.meta_path.insert(0, _RuntimeInstall())
from server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_bench_signals_runs_on_a_runtime_install(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TEST_PACKAGES, "bench-signals", "--onsets", "1",
         "--media-workers", "0", "--json", str(out)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["detected"] == 1


# --------------------------------------------------------------------------- rapport serve
def _serve(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}",
            "RAPPORT_MEDIA_WORKERS": "1",
            "RAPPORT_LOG_JSON": "false",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _connects(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_url_and_setup_link_are_printed_once_the_port_listens(tmp_path: Path) -> None:
    """Each line is checked as it arrives: when the URL or the setup link shows, the port
    already accepts connections (they used to print before the database, the media workers
    and the socket were ready). What the start is doing is said before that."""
    port = free_port()
    proc = _serve(tmp_path, port)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip())
            if f"127.0.0.1:{port}" in line:
                assert _connects(port), f"printed before the port listened: {line!r}"
            if "/setup/" in line:
                break
        output = "\n".join(seen)
        assert any(f"open http://127.0.0.1:{port}/" in s for s in seen), output
        assert any("/setup/" in s for s in seen), output
        url_at = next(i for i, s in enumerate(seen) if f"open http://127.0.0.1:{port}/" in s)
        said = "\n".join(seen[:url_at]).lower()
        assert "media worker" in said and "loading" in said, output
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_taken_port_is_a_clear_error_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _serve(tmp_path, port)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert f"Port {port} on 127.0.0.1 is already in use" in out, out
    assert "--port" in out and "Traceback" not in out, out
    assert "open http" not in out and "/setup/" not in out, out
    # Nothing was started: no database file was created for a server that never ran.
    assert not (tmp_path / "rapport.db").exists()


# --------------------------------------------------------------------------- CPU quota
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cpu_quota_is_read_from_cgroup_v1(tmp_path: Path, controller: str) -> None:
    """A container with --cpus=1 on a cgroup v1 host: one core, whatever the affinity lists
    (cgroup v2's cpu.max is covered in test_settings.py)."""
    assert len(os.sched_getaffinity(0)) > 1, "needs a machine with 2+ cores to tell"
    _write(tmp_path, {f"{controller}/cpu.cfs_quota_us": "100000\n",
                      f"{controller}/cpu.cfs_period_us": "100000\n"})  # fmt: skip
    assert usable_cores(tmp_path / "cpu.max") == 1
    # 1.5 cores of quota round up to 2 (a worker per started core).
    _write(tmp_path, {f"{controller}/cpu.cfs_quota_us": "150000\n"})
    assert usable_cores(tmp_path / "cpu.max") == min(2, len(os.sched_getaffinity(0)))
    # -1 is v1's "no quota".
    _write(tmp_path, {f"{controller}/cpu.cfs_quota_us": "-1\n"})
    assert usable_cores(tmp_path / "cpu.max") == len(os.sched_getaffinity(0))
    # A v2 file, when there is one, is what counts.
    _write(tmp_path, {f"{controller}/cpu.cfs_quota_us": "100000\n", "cpu.max": "max 100000\n"})
    assert usable_cores(tmp_path / "cpu.max") == len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- dev.sh
FAKE_PYTHON = """#!/bin/sh
# A stand-in for python3 / the venv's python: `-m venv DIR` makes DIR/bin/python (this script)
# and DIR/bin/rapport; `-m pip ...` prints what setuptools prints when it builds the project.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"; cp "$0" "$3/bin/python"
  printf '#!/bin/sh\\necho "rapport $*"\\n' > "$3/bin/rapport"
  chmod +x "$3/bin/python" "$3/bin/rapport"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "********************************************************************************" >&2
  echo "SetuptoolsDeprecationWarning: a warning box from the build backend" >&2
  echo "********************************************************************************" >&2
  exit ${FAKE_PIP_EXIT:-0}
fi
exit 0
"""


def _dev_sh(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "dev.sh").write_text((REPO_ROOT / "dev.sh").read_text())
    (tmp_path / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return subprocess.run(
        ["bash", str(tmp_path / "dev.sh"), "serve", "--port", "8123"],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_first_start_says_what_it_installs_without_the_build_backends_warning_box(
    tmp_path: Path,
) -> None:
    result = _dev_sh(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Installing Rapport" in output, output
    assert "*****" not in output and "SetuptoolsDeprecationWarning" not in output, output
    assert "rapport serve --port 8123" in result.stdout
    # The second start installs nothing and says nothing about it.
    again = _dev_sh_again(tmp_path)
    assert "Installing" not in again.stdout + again.stderr
    # A failed install still shows everything pip said.
    failed = _dev_sh(tmp_path / "failing", FAKE_PIP_EXIT="1")
    assert failed.returncode != 0
    assert "SetuptoolsDeprecationWarning" in failed.stderr, failed.stderr


def _dev_sh_again(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(tmp_path / "dev.sh"), "serve"],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{tmp_path / 'fakebin'}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )

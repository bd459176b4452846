"""``rapport bench --nodes 1,2`` end to end, briefly: a real redis-server and real nodes.

One session for a few seconds per node count. Figures from a run this short on a shared
machine mean little; the test checks that both node counts produce them, that the two-node run
really was a cluster (the participants entered through different nodes, one socket relayed,
media both ways), and that nothing the bench started outlives it, also when interrupted.

Every process the bench starts (nodes, their media workers, load generators) inherits its
environment, so a token put there finds them in /proc; redis-server overwrites its environment
with its process title, but it runs in the run's temp dir, which is under the test's TMPDIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.settings import usable_cores
from tests.support import eventually_sync

REPO_ROOT = Path(__file__).resolve().parent.parent
MARK = "RAPPORT_BENCH_TEST_RUN"


def _marked(token: str, tmp: Path) -> dict[int, str]:
    """Live processes (not zombies) whose environment carries the token or whose working
    directory is under ``tmp``: pid -> command line."""
    needle = f"{MARK}={token}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            mine = needle in (entry / "environ").read_bytes().split(b"\0")
            if mine or os.readlink(entry / "cwd").startswith(str(tmp)):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                found[int(entry.name)] = command.decode(errors="replace")
    return found


def _kinds(commands: dict[int, str]) -> set[str]:
    kinds = set()
    for command in commands.values():
        for kind in ("redis-server", "--serve-child", "media.workers.worker", "loadgen"):
            if kind in command:
                kinds.add(kind)
    return kinds


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _bench(token: str, tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "bench", *args],
        cwd=REPO_ROOT,
        env={**os.environ, MARK: token, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Started the way a shell without job control starts a background job: SIGINT
        # inherited as ignored. Ctrl-C must stop the bench however it was started (a
        # backgrounded CI run once saw the bench run its full minute).
        preexec_fn=_sigint_ignored,
    )


@pytest.mark.timeout(500)
def test_bench_drives_one_node_and_two(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    token, tmp = secrets.token_hex(8), tmp_path / "tmp"
    tmp.mkdir()
    bench = _bench(
        token,
        tmp,
        *("--nodes", "1,2", "--sessions", "1", "--duration", "4", "--warmup", "1"),
        *("--json", str(out)),
    )
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 450
        while bench.poll() is None and time.monotonic() < deadline:
            seen.update(_marked(token, tmp))
            time.sleep(0.2)
        output = bench.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 0, output
    assert "sessions per core" in output  # the printed summary
    # While it ran, the bench had started everything it says it does...
    assert _kinds(seen) == {"redis-server", "--serve-child", "media.workers.worker", "loadgen"}
    # ...and none of it is left now.
    assert _marked(token, tmp) == {}

    data = json.loads(out.read_text())
    assert set(data["by_nodes"]) == {"1", "2"}
    cores = usable_cores()
    for nodes, run in data["by_nodes"].items():
        context = json.dumps(run, indent=1)
        assert run["nodes"] == int(nodes) and run["sessions_started"] == 1, context
        assert run["server_cpu_per_session"] > 0 and run["sessions_per_core"] > 0, context
        assert run["redis_cpu_cores"] is not None and run["redis_cpu_cores"] >= 0, context
        assert all(node["cpu_cores"] > 0 for node in run["per_node"]), context
        # The cores are split between the nodes' media workers, as the output says.
        per_node = max(1, cores // int(nodes))
        assert [n["media_workers"] for n in run["per_node"]] == [per_node] * int(nodes), context
        assert f"{per_node} media worker(s) per node" in run["core_split"]
        # Media flowed both ways, through the server (latencies measured).
        for direction in ("therapist->client", "client->therapist"):
            for kind in ("audio", "video"):
                assert run["frames_received"][direction][kind] > 0, context
        assert all(v is not None for v in run["added_latency_ms"].values()), context
        assert sum(run["hosted_sessions"]) == 1, context  # the room lived on exactly one node

    one, two = data["by_nodes"]["1"], data["by_nodes"]["2"]
    assert one["relayed_sockets"] == 0
    assert one["entries"] == [{"session": 0, "therapist_node": 1, "client_node": 1}]
    # Two nodes: the participants entered through different nodes, and the node not hosting
    # the room relayed its socket (the servers' own count, at the end of the window).
    assert two["entries"] == [{"session": 0, "therapist_node": 1, "client_node": 2}]
    assert two["relayed_sockets"] == 1, json.dumps(two, indent=1)
    assert len(two["per_node"]) == 2


@pytest.mark.timeout(300)
def test_an_interrupted_cluster_bench_leaves_nothing_running(tmp_path: Path) -> None:
    token, tmp = secrets.token_hex(8), tmp_path
    bench = _bench(token, tmp, "--nodes", "2", "--sessions", "1", "--duration", "60")
    try:
        # Interrupted once Redis and a node's media workers are up.
        def started() -> bool:
            assert bench.poll() is None, bench.communicate()[0]  # not exited early
            return {"redis-server", "media.workers.worker"} <= _kinds(_marked(token, tmp))

        eventually_sync(
            started,
            timeout=180,
            interval=0.2,
            message=lambda: f"the bench did not get going: {_marked(token, tmp)}",
        )
        bench.send_signal(signal.SIGINT)
        output = bench.communicate(timeout=120)[0]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130, output
    assert _marked(token, tmp) == {}

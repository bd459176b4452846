"""``rapport bench --nodes 1,2``: sessions per core of a cluster of one node and of two.

For each node count a run starts a throwaway ``redis-server`` (127.0.0.1, a free port, no
persistence; or uses ``--redis-url``) and that many nodes (the bench's server child in cluster
mode, ``RAPPORT_REDIS_URL`` and ``RAPPORT_NODE_ID`` set) sharing one database: a SQLite file in
the run's temp dir by default (WAL and a busy timeout, server/db.py, let two writers share it;
the bench writes little), or ``--database-url``. The load generators of server/bench/relay.py
then drive N sessions whose therapist enters through node k and client through node k + 1
(round-robin), so with two nodes every session has one relayed socket; the cluster places each
room itself (least-loaded node), and the media goes to the hosting node's workers.

The machine's cores are split between the nodes' media workers: each node gets
``cores // nodes`` workers (at least one), so one node with two workers and two nodes with one
each use the same number of media processes; the operating system schedules them all over all
cores (no pinning), as it does the load generators. CPU is measured, as in the single-node
bench, as CPU seconds per second of every node's process tree (server and media workers) plus
the Redis server's; sessions per core is sessions over that.

Every child runs in its own process group and is stopped on the way out (SIGTERM, then
SIGKILL of the whole group), on errors and on Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.bench.relay import (
    REPO_ROOT,
    RunFailed,
    _fmt,
    _free_port,
    _http_json,
    _readline,
    _run_cli,
    _wait_http,
    cpu_seconds,
    prepare_run,
    spawn_loadgens,
    start_measuring,
    summarise,
    tree_cpu_seconds,
    udp_rcvbuf_errors,
)

DIRECTIONS = ("therapist->client", "client->therapist")


def core_split(nodes: int, media_workers: int | None) -> tuple[int, str]:
    """Media workers per node, and how they were chosen (printed with the figures)."""
    from server.settings import usable_cores

    cores = usable_cores()
    if media_workers is not None:
        return media_workers, f"{media_workers} media worker(s) per node (--media-workers)"
    per_node = max(1, cores // nodes)
    return per_node, (
        f"{cores} core(s) split over {nodes} node(s): {per_node} media worker(s) per node, "
        f"{per_node * nodes} in all (not pinned)"
    )


# ---------------------------------------------------------------------------- processes
async def _spawn(
    argv: list[str], env: dict[str, str] | None, log: Any, *, stdin: int | None = None
) -> asyncio.subprocess.Process:
    """A child in its own process group, so stopping it also stops what it started."""
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the child, wait up to ``grace_s``, then SIGKILL its whole process group
    (a node's media workers included), whether or not the child itself is gone already."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace_s)
        except TimeoutError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    # Wait for the group to be gone, so a caller that checks right after sees nothing left.
    for _ in range(100):  # 5 s at most
        if not _group_alive(proc.pid):
            return
        await asyncio.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            raw = (entry / "stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


async def _start_redis(workdir: Path, log: Any) -> tuple[asyncio.subprocess.Process, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RunFailed("redis-server is not on PATH (Debian: redis-server); or use --redis-url")
    port = _free_port()
    proc = await _spawn(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        None,
        log,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


async def _wait_redis(url: str, deadline: float, proc: asyncio.subprocess.Process | None) -> None:
    from redis.asyncio import Redis

    while True:
        if proc is not None and proc.returncode is not None:
            raise RunFailed(f"redis-server exited with {proc.returncode}")
        client = Redis.from_url(url, socket_connect_timeout=1)
        try:
            if await client.ping():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise RunFailed("Redis did not answer in time") from None
        finally:
            await client.aclose()
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- one run
async def run_cluster_once(
    args: argparse.Namespace, nodes: int, sessions: int, clip: Path
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"rapport-bench-cluster-{nodes}x{sessions}-"))
    loadgens: list[asyncio.subprocess.Process] = []
    servers: list[asyncio.subprocess.Process] = []
    redis_proc: asyncio.subprocess.Process | None = None
    logs: list[Any] = []

    def log_file(name: str) -> Any:
        handle = (workdir / name).open("wb")
        logs.append(handle)
        return handle

    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            redis_proc, redis_url = await _start_redis(workdir, log_file("redis.log"))
        await _wait_redis(redis_url, time.monotonic() + 20, redis_proc)
        database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        per_node, split = core_split(nodes, args.media_workers)
        run_id = secrets.token_hex(3)
        password = secrets.token_urlsafe(18)
        # A database given by the user may hold earlier runs' accounts: a fresh one each run.
        email = f"bench-{run_id}@example.test" if args.database_url else args.email
        urls: list[str] = []
        for index in range(nodes):
            port = _free_port()
            base_url = f"http://127.0.0.1:{port}"
            node_id = f"bench{nodes}-{index + 1}-{run_id}"
            env = {
                **os.environ,
                "RAPPORT_DATABASE_URL": database_url,
                "RAPPORT_REDIS_URL": redis_url,
                "RAPPORT_NODE_ID": node_id,
                "RAPPORT_PUBLIC_URL": base_url,
                "RAPPORT_HOST": "127.0.0.1",
                "RAPPORT_PORT": str(port),
                "RAPPORT_MEDIA_ADDRESSES": '["127.0.0.1"]',
                "RAPPORT_ALLOW_LOOPBACK_CANDIDATES": "true",
                "RAPPORT_RELAY_MODE": args.mode,
                "RAPPORT_MEDIA_WORKERS": str(per_node),
                "RAPPORT_LOG_JSON": "false",
                "RAPPORT_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
            proc = await _spawn(
                [sys.executable, "-m", "server.bench.relay", "--serve-child"],
                env,
                log_file(f"node{index + 1}.log"),
            )
            servers.append(proc)
            # One after the other: the first creates the schema, then the account.
            await _wait_http(f"{base_url}/healthz", time.monotonic() + 60, proc)
            if index == 0:
                await _run_cli(
                    env,
                    "user",
                    "add",
                    email,
                    "--role",
                    "therapist",
                    "--name",
                    "Bench",
                    stdin=password + "\n",
                )
            urls.append(base_url)
        await _wait_cluster(urls, nodes, time.monotonic() + 30)
        for url in urls:
            await asyncio.to_thread(_http_json, f"{url}/_bench/stats?reset=1")

        await spawn_loadgens(
            loadgens,
            args,
            sessions,
            ["--url", urls[0], "--entry-urls", ",".join(urls)],
            email,
            password,
            clip,
            log_file,
            new_session=True,
        )
        started, until = await start_measuring(loadgens, sessions, args)
        pids = [proc.pid for proc in servers]
        node_cpu0 = [tree_cpu_seconds(pid) for pid in pids]
        redis_cpu0 = cpu_seconds(redis_proc.pid) if redis_proc else None
        wall0 = time.monotonic()
        rcvbuf0 = udp_rcvbuf_errors()
        loadgen_cpu0 = sum(cpu_seconds(p.pid) for p in loadgens)
        for url in urls:
            await asyncio.to_thread(_http_json, f"{url}/_bench/stats?reset=1")
        load_before = os.getloadavg()[0]
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        node_cpu1 = [tree_cpu_seconds(pid) for pid in pids]
        redis_cpu1 = cpu_seconds(redis_proc.pid) if redis_proc else None
        wall1 = time.monotonic()
        rcvbuf1 = udp_rcvbuf_errors()
        loadgen_cpu1 = sum(cpu_seconds(p.pid) for p in loadgens)
        stats = [await asyncio.to_thread(_http_json, f"{url}/_bench/stats") for url in urls]
        results = [await _readline(proc, until + 60) for proc in loadgens]
        wall = wall1 - wall0
        node_cpu = [(b - a) / wall for a, b in zip(node_cpu0, node_cpu1, strict=True)]
        redis_cpu = (
            None if redis_cpu0 is None or redis_cpu1 is None else (redis_cpu1 - redis_cpu0) / wall
        )
        run = summarise(
            args.mode,
            sessions,
            started,
            results,
            cpu=sum(node_cpu) + (redis_cpu or 0.0),
            loadgen_cpu=(loadgen_cpu1 - loadgen_cpu0) / wall,
            rcvbuf=rcvbuf1 - rcvbuf0,
            server_stats=_merged_stats(stats),
            load=load_before,
        )
        figures = _cluster_figures(urls, stats, results, node_cpu)
        return {
            **run,
            "nodes": nodes,
            "media_workers_per_node": per_node,
            "core_split": split,
            "redis_cpu_cores": None if redis_cpu is None else round(redis_cpu, 4),
            **figures,
        }
    finally:
        # Load generators first (their sockets close, rooms empty), then the nodes (they
        # leave the cluster through Redis), then Redis.
        for proc in loadgens:
            await stop_group(proc, 10)
        for proc in reversed(servers):
            await stop_group(proc, 15)
        if redis_proc is not None:
            await stop_group(redis_proc, 5)
        for handle in logs:
            handle.close()
        if args.keep:
            print(f"  kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _wait_cluster(urls: list[str], nodes: int, deadline: float) -> None:
    """Until every node sees every node: placement must be able to choose any of them."""
    while True:
        seen = [
            (await asyncio.to_thread(_http_json, f"{url}/_bench/stats"))["cluster_nodes"]
            for url in urls
        ]
        if all(s == nodes for s in seen):
            return
        if time.monotonic() > deadline:
            raise RunFailed(f"the nodes did not all see each other in Redis: {seen}")
        await asyncio.sleep(0.2)


def _merged_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The nodes' /_bench/stats as one server's: the worst loop lag, summed counts."""
    worst = max(stats, key=lambda s: s["loop_lag_ms"].get("p99") or 0.0)
    directions: dict[str, int] = {}
    for s in stats:
        for mode, n in s["relay_directions"].items():
            directions[mode] = directions.get(mode, 0) + n
    return {
        "loop_lag_ms": worst["loop_lag_ms"],
        "worker_loop_lag_p99_ms": [v for s in stats for v in s["worker_loop_lag_p99_ms"]],
        "media_workers": sum(s["media_workers"] for s in stats),
        "relay_directions": directions,
        "outbound_drops": sum(s["outbound_drops"] for s in stats),
    }


def _cluster_figures(
    urls: list[str],
    stats: list[dict[str, Any]],
    results: list[dict[str, Any]],
    node_cpu: list[float],
) -> dict[str, Any]:
    """Per direction and per node: what shows the run was a cluster and where the load went."""
    frames = {d: {"audio": 0, "video": 0} for d in DIRECTIONS}
    sent = {d: {"audio": 0, "video": 0} for d in DIRECTIONS}
    entries: list[dict[str, Any]] = []
    node_of = {url: i + 1 for i, url in enumerate(urls)}
    for result in results:
        for direction in DIRECTIONS:
            for kind in ("audio", "video"):
                part = result["directions"][direction][kind]
                frames[direction][kind] += part["received"]
                sent[direction][kind] += part["sent"]
        for entry in result["entries"]:
            entries.append(
                {
                    "session": entry["index"],
                    "therapist_node": node_of[entry["therapist"]],
                    "client_node": node_of[entry["client"]],
                }
            )
    return {
        "frames_received": frames,
        "frames_sent": sent,
        "entries": sorted(entries, key=lambda e: e["session"]),
        "per_node": [
            {
                "node": i + 1,
                "node_id": s["node_id"],
                "cpu_cores": round(node_cpu[i], 4),
                "hosted_sessions": len(s["hosted_sessions"]),
                "relayed_sockets": s["relayed_sockets"],
                "hosted_relayed_sockets": s["hosted_relayed_sockets"],
                "media_workers": s["media_workers"],
            }
            for i, s in enumerate(stats)
        ],
        "hosted_sessions": [len(s["hosted_sessions"]) for s in stats],
        "relayed_sockets": sum(s["relayed_sockets"] for s in stats),
    }


# ---------------------------------------------------------------------------- report
def print_cluster_table(runs: list[dict[str, Any]]) -> None:
    header = (
        f"{'nodes':>5}{'N':>4}{'cpu/sess':>10}{'sess/core':>10}{'redis':>7}"
        f"{'video t>c/c>t':>15}{'aud p50/p95':>13}{'vid p50/p95':>13}{'loss':>7}"
        f"{'hosted':>8}{'relayed':>8}  ok"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        a = run["added_latency_ms"]
        loss = run["frame_loss"]
        received = run["frames_received"]
        video = f"{received['therapist->client']['video']}/{received['client->therapist']['video']}"
        print(
            f"{run['nodes']:>5}{run['sessions']:>4}"
            f"{_fmt(run['server_cpu_per_session'], '.4f'):>10}"
            f"{_fmt(run['sessions_per_core'], '.1f'):>10}"
            f"{_fmt(run['redis_cpu_cores'], '.3f'):>7}"
            f"{video:>15}"
            f"{_fmt(a['audio_p50'], '.1f') + '/' + _fmt(a['audio_p95'], '.1f'):>13}"
            f"{_fmt(a['video_p50'], '.1f') + '/' + _fmt(a['video_p95'], '.1f'):>13}"
            f"{'-' if loss is None else f'{loss * 100:.2f}%':>7}"
            f"{'+'.join(str(n) for n in run['hosted_sessions']):>8}"
            f"{run['relayed_sockets']:>8}"
            f"  {'yes' if run['meets_target'] else 'no'}"
        )
    print(
        "(cpu: CPU s/s of every node's server and media workers plus Redis's; latencies: "
        "server-added ms over a direct peer-to-peer baseline; video: frames received per "
        "direction; hosted: sessions whose room each node hosted; relayed: sockets that "
        "entered a node not hosting their room)"
    )
    for run in runs:
        cpus = " + ".join(_fmt(node["cpu_cores"], ".3f") for node in run["per_node"])
        print(
            f"  {run['nodes']} node(s), N={run['sessions']}: {run['core_split']}; CPU s/s of "
            f"the nodes {cpus}, of Redis {_fmt(run['redis_cpu_cores'], '.3f')}"
        )


async def run_cluster_all(args: argparse.Namespace) -> dict[str, Any]:

    node_counts = sorted({int(x) for x in str(args.nodes).split(",") if x.strip()})
    sweep = sorted({int(x) for x in str(args.sessions).split(",") if x.strip()})
    if not node_counts or min(node_counts) < 1 or max(node_counts) > 16:
        raise SystemExit("--nodes needs node counts from 1 to 16, e.g. 1,2")
    if not sweep or min(sweep) < 1:
        raise SystemExit("--sessions needs positive numbers, e.g. 1 or 1,4,8")
    if args.url or args.compare:
        raise SystemExit("--nodes starts its own nodes: it cannot be used with --url or --compare")
    for url, what in ((args.redis_url, "--redis-url"), (args.database_url, "--database-url")):
        if url and not any(h in url for h in ("@127.0.0.1", "//127.0.0.1", "localhost")):
            raise SystemExit(f"{what} must be a service on this machine (127.0.0.1)")
    clip, load = await prepare_run(args)
    runs: list[dict[str, Any]] = []
    for sessions in sweep:
        for nodes in node_counts:
            print(
                f"  {nodes} node(s), {args.mode}: {sessions} session(s) for {args.duration:g} s",
                file=sys.stderr,
                flush=True,
            )
            try:
                runs.append(await run_cluster_once(args, nodes, sessions, clip))
            except RunFailed as exc:
                print(f"  {nodes} node(s) x{sessions} failed: {exc}", file=sys.stderr, flush=True)
    by_nodes: dict[str, Any] = {}
    for run in runs:  # the largest N that was run, per node count
        key = str(run["nodes"])
        if key not in by_nodes or run["sessions"] > by_nodes[key]["sessions"]:
            by_nodes[key] = run
    return {
        "cluster": True,
        "mode": args.mode,
        "duration_s": args.duration,
        "nodes": node_counts,
        "sessions": sweep,
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(load, 2),
        "runs": runs,
        "by_nodes": by_nodes,
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    """``run_cluster_all``, cancelled (so every child is stopped) on SIGTERM as on Ctrl-C.

    SIGINT gets its own handler too: a process started in the background by a shell without
    job control inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt
    (the interrupt test ran a full minute in a backgrounded CI run)."""
    task = asyncio.ensure_future(run_cluster_all(args))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, task.cancel)
    try:
        return await task
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)


def run_cluster_from_args(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("  interrupted; every child process was stopped", file=sys.stderr)
        return 130
    print_cluster_table(result["runs"])
    for key, run in result["by_nodes"].items():
        print(
            f"{key} node(s): {run['sessions']} session(s), "
            f"sessions per core {_fmt(run['sessions_per_core'], '.1f')}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if len(result["by_nodes"]) == len(result["nodes"]) else 1

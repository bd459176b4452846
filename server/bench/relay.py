"""``rapport bench``: how many sessions one core relays, forwarding vs transcoding.

Each run starts a real Rapport server in a subprocess (127.0.0.1 only, a throw-away SQLite
database, ``RAPPORT_RELAY_MODE`` set to the mode under test) or targets a running one, and
drives N two-party sessions from separate load-generator processes (``server.bench.loadgen``):
they sign in, create sessions and admit clients through the real HTTP API and WebSocket
protocol, then send pre-encoded 640×480@30 VP8 (~1 Mbps) and Opus both ways.

Measured over a window after set-up and warm-up:

* server CPU per session: CPU seconds per second of the server process (all threads, from
  ``/proc/<pid>/stat``) divided by N; ``sessions_per_core`` is its inverse;
* server-added latency p50/p95 for audio and video: sender-to-receiver latency through the
  server minus the same measurement over a direct aiortc pair run in the same process at the
  same time (see server/bench/loadgen.py for how frames are matched);
* frame loss; UDP receive-buffer drops (``RcvbufErrors`` in ``/proc/net/snmp``, machine-wide);
* event-loop lag p99 of the server, from an internal endpoint that only the bench's own
  server child has (``/_bench/stats``, bound to 127.0.0.1 like the rest of it).

A run meets the target when added p95 latency is under 10 ms for audio and video and frame
loss under 1 %. Everything stops by itself: every wait has a deadline and every child is
killed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from server.bench.stats import percentile

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BENCH_EMAIL = "bench-therapist@example.test"
SLO_P95_MS = 10.0
SLO_LOSS = 0.01
MODES = ("forward", "transcode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sessions", default="1", help="sessions per run, or a list to sweep (e.g. 1,4,8)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds between set-up and measuring"
    )
    parser.add_argument("--compare", action="store_true", help="also run the transcoding relay")
    parser.add_argument(
        "--compare-up-to",
        type=int,
        default=0,
        help="with --compare, run transcoding only up to this many sessions (it needs ~1 core "
        "per session); 0: every N",
    )
    parser.add_argument(
        "--mode", choices=MODES, default="forward", help="relay mode without --compare"
    )
    parser.add_argument(
        "--media-workers",
        type=int,
        default=None,
        help="media worker processes of the bench's server (default: the server's, one per "
        "core; 0: media in the server process)",
    )
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--loadgens", type=int, default=0, help="load-generator processes (0: auto)"
    )
    parser.add_argument(
        "--stagger", type=float, default=0.25, help="seconds between session set-ups"
    )
    parser.add_argument("--clip", help="pre-encoded media cache (default: ~/.cache/rapport)")
    parser.add_argument(
        "--url",
        help="bench a running server on 127.0.0.1 instead of starting one (its relay mode is "
        "--mode; the therapist's password comes from RAPPORT_BENCH_PASSWORD)",
    )
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for CPU")
    parser.add_argument("--email", default=BENCH_EMAIL, help="with --url: a therapist account")
    parser.add_argument("--keep", action="store_true", help="keep each run's temp dir and logs")
    # --- cluster bench (issue 15): server/bench/cluster.py
    parser.add_argument(
        "--nodes",
        help="bench a cluster instead: node counts to run, e.g. 1,2 (each run starts a "
        "throwaway redis-server and that many nodes on 127.0.0.1; the therapist and the "
        "client of a session enter through different nodes)",
    )
    parser.add_argument(
        "--redis-url",
        help="with --nodes: use this Redis (on 127.0.0.1, used by no other Rapport node) "
        "instead of starting one; its CPU is then not counted",
    )
    parser.add_argument(
        "--database-url",
        help="with --nodes: the nodes' shared database (e.g. PostgreSQL); default a SQLite "
        "file (WAL) in the run's temp dir",
    )


# ---------------------------------------------------------------------------- probes
def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc (getrusage only sees children)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and every live descendant: the server and its media workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(current)
        todo += children.get(current, [])
    return total


def udp_rcvbuf_errors() -> int:
    lines = [
        line.split()
        for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    ]
    if len(lines) < 2:
        return 0
    return int(dict(zip(lines[0][1:], lines[1][1:], strict=False)).get("RcvbufErrors", 0))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


# ---------------------------------------------------------------------------- server child
def serve_child() -> int:
    """The server as ``rapport serve`` runs it, plus ``/_bench/stats`` for the bench."""
    import uvicorn
    from fastapi import FastAPI

    from media.loops import LoopLagSampler
    from server.app import create_app
    from server.logs import configure
    from server.settings import Settings

    settings = Settings()
    configure(settings.log_level, settings.log_json)
    app: FastAPI = create_app(settings)
    # Finer than the server's own 0.25 s sampler, to resolve a 20 s window; 50 ms, not 10:
    # a 10 ms probe cost the server ~0.02 CPU s/s, which the bench counted as relay CPU.
    lag = LoopLagSampler(0.05, keep=200_000)

    async def bench_stats(reset: bool = False) -> dict[str, Any]:
        lag.start()
        samples = [s * 1000 for s in lag.samples]
        if reset:
            lag.samples.clear()
        modes: dict[str, int] = {"forward": 0, "transcode": 0}
        drops = 0
        for room in app.state.rooms.rooms.values():
            stats = await room.call.relay_stats()
            for mode in stats["relay_mode"].values():
                modes[mode] = modes.get(mode, 0) + 1
            for peer in stats["peers"].values():
                drops += sum(o["dropped"] for o in peer["outbound"].values())
        pool = app.state.media_pool
        workers = await pool.health(reset_lag=reset) if pool is not None else []
        cluster = app.state.cluster
        return {
            "pid": os.getpid(),
            # Cluster mode (``--nodes``): what this node hosts and relays right now.
            "node_id": settings.node_id,
            "hosted_sessions": sorted(
                sid for sid, room in app.state.rooms.rooms.items() if room.members
            ),
            "relayed_sockets": len(cluster.outbound) if cluster is not None else 0,
            "hosted_relayed_sockets": len(cluster.inbound) if cluster is not None else 0,
            "cluster_nodes": len(cluster.peers) if cluster is not None else None,
            "media_workers": len(workers),
            "worker_loop_lag_p99_ms": [w.get("loop_lag_p99_ms") for w in workers],
            "loop_lag_ms": {
                "samples": len(samples),
                "p50": percentile(samples, 0.5),
                "p99": percentile(samples, 0.99),
                "max": max(samples, default=None),
            },
            "relay_directions": modes,
            "outbound_drops": drops,
        }

    app.add_api_route("/_bench/stats", bench_stats, methods=["GET"], include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())  # ahead of any page route
    uvicorn.run(app, host="127.0.0.1", port=settings.port, log_level="warning", ws_max_size=1 << 20)
    return 0


# ---------------------------------------------------------------------------- one run
class RunFailed(RuntimeError):
    pass


async def _wait_http(url: str, deadline: float, proc: asyncio.subprocess.Process | None) -> None:
    while True:
        if proc is not None and proc.returncode is not None:
            raise RunFailed(f"server exited with {proc.returncode}")
        try:
            await asyncio.to_thread(_http_json, url, 1.0)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RunFailed(f"{url} did not answer in time") from None
        await asyncio.sleep(0.2)


async def _run_cli(env: dict[str, str], *args: str, stdin: str = "", wait_s: float = 60.0) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), wait_s)
    except TimeoutError:
        raise RunFailed(f"rapport {' '.join(args)} timed out") from None
    finally:
        if proc.returncode is None:  # timed out, or the bench was interrupted
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    if proc.returncode != 0:
        raise RunFailed(f"rapport {' '.join(args)} failed: {out.decode(errors='replace')[-500:]}")


async def _readline(proc: asyncio.subprocess.Process, deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunFailed("a load generator did not answer in time")
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), remaining)
        except (TimeoutError, ValueError) as exc:
            raise RunFailed(f"a load generator did not answer: {exc!r}") from None
        if not line:
            raise RunFailed(f"a load generator exited ({proc.returncode})")
        with contextlib.suppress(json.JSONDecodeError):
            message: dict[str, Any] = json.loads(line)
            return message


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _opened(logs: list[Any], path: Path) -> IO[bytes]:
    """A log file for a child process, kept in ``logs`` so the run closes it."""
    handle = path.open("wb")
    logs.append(handle)
    return handle


async def spawn_loadgens(
    procs: list[asyncio.subprocess.Process],
    args: argparse.Namespace,
    sessions: int,
    target: list[str],
    email: str,
    password: str,
    clip: Path,
    open_log: Callable[[str], IO[bytes]],
    *,
    new_session: bool = False,
) -> None:
    """Start the load generators that carry ``sessions``, appending each to ``procs`` as it
    starts (the caller's cleanup must see a generator even if a later one fails to start).
    ``target`` is the loadgen's address arguments (``--url``, and ``--entry-urls`` for a
    cluster); the first generator also measures the direct path."""
    count = args.loadgens or (
        1 if sessions <= 2 else min(os.cpu_count() or 1, math.ceil(sessions / 4))
    )
    count = max(1, min(count, sessions))
    first = 0
    for index, share in enumerate(_split(sessions, count)):
        cmd = [
            sys.executable,
            "-m",
            "server.bench.loadgen",
            *target,
            "--email",
            email,
            "--sessions",
            str(share),
            "--first-index",
            str(first),
            "--stagger",
            str(args.stagger),
            "--clip",
            str(clip),
        ]
        if index == 0:
            cmd.append("--direct")
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=open_log(f"loadgen{index}.log"),
            limit=256 * 1024 * 1024,  # results carry every latency sample
            start_new_session=new_session,
        )
        assert proc.stdin is not None
        proc.stdin.write((password + "\n").encode())
        await proc.stdin.drain()
        procs.append(proc)
        first += share


async def start_measuring(
    procs: list[asyncio.subprocess.Process], sessions: int, args: argparse.Namespace
) -> tuple[int, float]:
    """Wait until every generator has its sessions up, tell them all one measuring window
    (after ``args.warmup``), and return at its start with (sessions started, window's end)."""
    ready_deadline = time.monotonic() + 60 + sessions * (args.stagger + 2.0)
    started = 0
    for proc in procs:
        message = await _readline(proc, ready_deadline)
        if message.get("event") != "ready":
            raise RunFailed(f"unexpected load generator message {message}")
        started += int(message["sessions"])
    if started == 0:
        raise RunFailed("no session could be set up; see the load generator logs")
    start = time.monotonic() + args.warmup
    until = start + args.duration
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(
            (json.dumps({"cmd": "measure", "from": start, "until": until}) + "\n").encode()
        )
        await proc.stdin.drain()
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    return started, until


async def run_once(
    args: argparse.Namespace, mode: str, sessions: int, clip: Path
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"rapport-bench-{mode}-{sessions}-"))
    procs: list[asyncio.subprocess.Process] = []
    server: asyncio.subprocess.Process | None = None
    logs: list[Any] = []
    try:
        password = secrets.token_urlsafe(18)
        if args.url:
            base_url = args.url.rstrip("/")
            password = os.environ.get("RAPPORT_BENCH_PASSWORD", "")
            server_pid = args.server_pid
        else:
            port = _free_port()
            base_url = f"http://127.0.0.1:{port}"
            env = {
                **os.environ,
                "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
                "RAPPORT_PUBLIC_URL": base_url,
                "RAPPORT_HOST": "127.0.0.1",
                "RAPPORT_PORT": str(port),
                # JSON form: pydantic-settings decodes list settings as JSON first.
                "RAPPORT_MEDIA_ADDRESSES": '["127.0.0.1"]',
                "RAPPORT_ALLOW_LOOPBACK_CANDIDATES": "true",
                "RAPPORT_RELAY_MODE": mode,
                "RAPPORT_LOG_JSON": "false",
                "RAPPORT_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
            if args.media_workers is not None:
                env["RAPPORT_MEDIA_WORKERS"] = str(args.media_workers)
            server_log = (workdir / "server.log").open("wb")
            logs.append(server_log)
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.bench.relay",
                "--serve-child",
                cwd=REPO_ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=server_log,
                stderr=asyncio.subprocess.STDOUT,
            )
            server_pid = server.pid
            await _wait_http(f"{base_url}/healthz", time.monotonic() + 30, server)
            await _run_cli(
                env,
                "user",
                "add",
                args.email,
                "--role",
                "therapist",
                "--name",
                "Bench",
                stdin=password + "\n",
            )
        stats_url = f"{base_url}/_bench/stats"
        has_stats = not args.url
        if has_stats:
            await asyncio.to_thread(_http_json, stats_url + "?reset=1")

        await spawn_loadgens(
            procs,
            args,
            sessions,
            ["--url", base_url],
            args.email,
            password,
            clip,
            lambda name: _opened(logs, workdir / name),
        )
        started, until = await start_measuring(procs, sessions, args)
        cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
        wall0 = time.monotonic()
        rcvbuf0 = udp_rcvbuf_errors()
        loadgen_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        if has_stats:
            await asyncio.to_thread(_http_json, stats_url + "?reset=1")
        load_before = os.getloadavg()[0]
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        cpu1 = tree_cpu_seconds(server_pid) if server_pid else None
        wall1 = time.monotonic()
        rcvbuf1 = udp_rcvbuf_errors()
        loadgen_cpu1 = sum(cpu_seconds(p.pid) for p in procs)
        server_stats = await asyncio.to_thread(_http_json, stats_url) if has_stats else None
        results = [await _readline(proc, until + 60) for proc in procs]
        return summarise(
            mode,
            sessions,
            started,
            results,
            cpu=None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (wall1 - wall0),
            loadgen_cpu=(loadgen_cpu1 - loadgen_cpu0) / (wall1 - wall0),
            rcvbuf=rcvbuf1 - rcvbuf0,
            server_stats=server_stats,
            load=load_before,
        )
    finally:
        for proc in [*procs, *([server] if server else [])]:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for handle in logs:
            handle.close()
        if args.keep:
            print(f"  kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _below(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def summarise(
    mode: str,
    sessions: int,
    started: int,
    results: list[dict[str, Any]],
    *,
    cpu: float | None,
    loadgen_cpu: float,
    rcvbuf: int,
    server_stats: dict[str, Any] | None,
    load: float,
) -> dict[str, Any]:
    relay: dict[str, list[float]] = {"audio": [], "video": []}
    direct: dict[str, list[float]] = {"audio": [], "video": []}
    sent = {"audio": 0, "video": 0}
    received = {"audio": 0, "video": 0}
    unmatched = 0
    for result in results:
        for kind in ("audio", "video"):
            part = result["relay"][kind]
            relay[kind] += part["latencies_ms"]
            sent[kind] += part["sent"]
            received[kind] += part["received"]
            unmatched += part["streams_unmatched"]
            if result.get("direct"):
                direct[kind] += result["direct"][kind]["latencies_ms"]

    def pct(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 3)

    relay_ms = {f"{k}_p{q}": pct(relay[k], q / 100) for k in ("audio", "video") for q in (50, 95)}
    direct_ms = {f"{k}_p{q}": pct(direct[k], q / 100) for k in ("audio", "video") for q in (50, 95)}
    added: dict[str, float | None] = {}
    for key, value in relay_ms.items():
        base = direct_ms[key]
        added[key] = None if value is None or base is None else round(max(0.0, value - base), 3)
    loss_detail = {k: (1 - received[k] / sent[k]) if sent[k] else None for k in ("audio", "video")}
    total_sent = sent["audio"] + sent["video"]
    frame_loss = 1 - (received["audio"] + received["video"]) / total_sent if total_sent else None
    per_session = cpu / started if cpu is not None and started else None
    lag = (server_stats or {}).get("loop_lag_ms", {})
    # The worst event loop of the server's processes: signalling's, or a media worker's.
    lags = [lag.get("p99"), *(server_stats or {}).get("worker_loop_lag_p99_ms", [])]
    lag_p99 = max((v for v in lags if v is not None), default=None)
    meets = (
        started == sessions
        and frame_loss is not None
        and frame_loss < SLO_LOSS
        and all(_below(added[f"{k}_p95"], SLO_P95_MS) for k in ("audio", "video"))
    )
    return {
        "mode": mode,
        "sessions": sessions,
        "sessions_started": started,
        "server_cpu_per_session": None if per_session is None else round(per_session, 5),
        "server_cpu_cores": None if cpu is None else round(cpu, 4),
        "sessions_per_core": None if not per_session else round(1 / per_session, 2),
        "added_latency_ms": added,
        "relay_latency_ms": relay_ms,
        "direct_latency_ms": direct_ms,
        "frame_loss": None if frame_loss is None else round(max(0.0, frame_loss), 5),
        "frame_loss_detail": {
            k: None if v is None else round(max(0.0, v), 5) for k, v in loss_detail.items()
        },
        "streams_unmatched": unmatched,
        "udp_rcvbuf_errors": rcvbuf,
        "loop_lag_p99_ms": None if lag_p99 is None else round(lag_p99, 3),
        "server_loop_lag_p99_ms": None if lag.get("p99") is None else round(lag["p99"], 3),
        "media_workers": (server_stats or {}).get("media_workers"),
        "loop_lag_max_ms": None if lag.get("max") is None else round(lag["max"], 3),
        "relay_directions": (server_stats or {}).get("relay_directions"),
        "server_outbound_drops": (server_stats or {}).get("outbound_drops"),
        "loadgen_cpu_cores": round(loadgen_cpu, 3),
        "load_average_1m": round(load, 2),
        "meets_target": bool(meets),
    }


# ---------------------------------------------------------------------------- report
def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(runs: list[dict[str, Any]]) -> None:
    header = (
        f"{'mode':<10}{'N':>4}{'cpu/sess':>10}{'sess/core':>10}{'aud p50/p95':>14}"
        f"{'vid p50/p95':>14}{'loss':>8}{'lag p99':>9}{'rcvbuf':>8}  ok"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        a = run["added_latency_ms"]
        loss = run["frame_loss"]
        print(
            f"{run['mode']:<10}{run['sessions']:>4}{_fmt(run['server_cpu_per_session'], '.4f'):>10}"
            f"{_fmt(run['sessions_per_core'], '.1f'):>10}"
            f"{_fmt(a['audio_p50'], '.1f') + '/' + _fmt(a['audio_p95'], '.1f'):>14}"
            f"{_fmt(a['video_p50'], '.1f') + '/' + _fmt(a['video_p95'], '.1f'):>14}"
            f"{'-' if loss is None else f'{loss * 100:.2f}%':>8}"
            f"{_fmt(run['loop_lag_p99_ms'], '.1f'):>9}{run['udp_rcvbuf_errors']:>8}"
            f"  {'yes' if run['meets_target'] else 'no'}"
        )
    print("(latencies: server-added ms over a direct peer-to-peer baseline; cpu: server CPU s/s)")


def report(
    runs: list[dict[str, Any]], args: argparse.Namespace, sweep: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "duration_s": args.duration,
        "sessions": sweep,
        "cpus": os.cpu_count(),
        "target": {"added_p95_ms_below": SLO_P95_MS, "frame_loss_below": SLO_LOSS},
        "runs": runs,
    }
    capacity: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        out[mode] = max(mine, key=lambda r: r["sessions"])  # the largest N that was run
        passing = [r for r in mine if r["meets_target"]]
        best = max(passing, key=lambda r: r["sessions"], default=None)
        capacity[mode] = {
            "max_sessions_meeting_target": best["sessions"] if best else 0,
            "sessions_per_core_at_target": best["sessions_per_core"] if best else None,
            "server_cpu_cores_at_target": best["server_cpu_cores"] if best else None,
        }
    out["capacity"] = capacity
    forward, transcode = out.get("forward"), out.get("transcode")
    if forward and transcode:
        common = sorted(
            {r["sessions"] for r in runs if r["mode"] == "forward"}
            & {r["sessions"] for r in runs if r["mode"] == "transcode"}
        )
        ratios = {}
        for n in common:
            f = next(r for r in runs if r["mode"] == "forward" and r["sessions"] == n)
            t = next(r for r in runs if r["mode"] == "transcode" and r["sessions"] == n)
            if f["server_cpu_per_session"] and t["server_cpu_per_session"]:
                ratios[str(n)] = round(t["server_cpu_per_session"] / f["server_cpu_per_session"], 2)
        out["cpu_ratio_by_sessions"] = ratios
        # The ratio is only fair while the transcoding server still has CPU to spare: past
        # one core it cannot use more, and its CPU per session falls as sessions pile up.
        transcode_cores = {
            r["sessions"]: r["server_cpu_cores"] for r in runs if r["mode"] == "transcode"
        }
        fair = [
            n
            for n in common
            if str(n) in ratios and transcode_cores.get(n) is not None and transcode_cores[n] < 0.85
        ]
        chosen = max(fair) if fair else (min(common) if common else None)
        out["cpu_ratio_sessions"] = chosen
        out["cpu_ratio"] = ratios.get(str(chosen)) if chosen is not None else None
    return out


def default_clip_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rapport" / "bench-clip-640x480.bin"


async def prepare_run(args: argparse.Namespace) -> tuple[Path, float]:
    """The pre-encoded clip every load generator sends (made once, then cached), and the load
    average at the start, with a warning when other work will skew the figures."""
    from server.bench.loadgen import load_or_make_clip

    clip = Path(args.clip) if args.clip else default_clip_path()
    print(f"  preparing media ({clip})", file=sys.stderr, flush=True)
    await asyncio.to_thread(load_or_make_clip, clip)
    load = os.getloadavg()[0]
    if load > 1.0:
        print(
            f"  warning: load average {load:.1f}: other work on this machine will skew the figures",
            file=sys.stderr,
            flush=True,
        )
    return clip, load


async def run_all(args: argparse.Namespace) -> dict[str, Any]:

    sweep = sorted({int(x) for x in str(args.sessions).split(",") if x.strip()})
    if not sweep or min(sweep) < 1:
        raise SystemExit("--sessions needs positive numbers, e.g. 1 or 1,4,8")
    if args.url and (
        not args.url.startswith("http://127.0.0.1") and not args.url.startswith("http://localhost")
    ):
        raise SystemExit("--url must be a server on this machine (127.0.0.1)")
    if args.url and args.compare:
        raise SystemExit("--compare starts servers in both relay modes; it cannot use --url")
    clip, _ = await prepare_run(args)
    modes = list(MODES) if args.compare else [args.mode]
    runs: list[dict[str, Any]] = []
    for sessions in sweep:
        for mode in modes:
            if mode == "transcode" and args.compare and 0 < args.compare_up_to < sessions:
                continue
            print(
                f"  {mode}: {sessions} session(s) for {args.duration:g} s",
                file=sys.stderr,
                flush=True,
            )
            try:
                runs.append(await run_once(args, mode, sessions, clip))
            except RunFailed as exc:
                print(f"  {mode} x{sessions} failed: {exc}", file=sys.stderr, flush=True)
    return report(runs, args, sweep)


def run_from_args(args: argparse.Namespace) -> int:
    if not args.url and not Path("/proc/self/stat").exists():
        raise SystemExit("rapport bench reads /proc; run it on Linux")
    if args.nodes:
        from server.bench.cluster import run_cluster_from_args

        return run_cluster_from_args(args)
    if args.redis_url or args.database_url:
        raise SystemExit("--redis-url and --database-url go with --nodes")
    result = asyncio.run(run_all(args))
    print_table(result["runs"])
    if result.get("cpu_ratio") is not None:
        print(f"CPU per session, transcode / forward: {result['cpu_ratio']:.1f}x")
    for mode, cap in result.get("capacity", {}).items():
        print(
            f"{mode}: target met up to {cap['max_sessions_meeting_target']} session(s); "
            f"sessions per core there: {_fmt(cap['sessions_per_core_at_target'], '.1f')}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["runs"] else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-child"]:
        sys.exit(serve_child())
    sys.exit("usage: rapport bench ... (python -m server.bench.relay --serve-child is internal)")

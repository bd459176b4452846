"""The ``rapport`` command: serve, manage users, verify the audit log, purge, analyse recordings."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import signal
import socket
import sys
from collections.abc import Coroutine
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from sqlalchemy import func, select

from .db import Database
from .models import User, UserRole
from .security import hash_password, password_problem, valid_email
from .settings import Settings, database_location

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("rapport")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts: a port in use is said plainly
    at once, not after the database and media workers started (and then as a traceback)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PortUnavailable(f"Cannot listen on {host}:{port}: {exc}.") from exc
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailable(
                f"Port {port} on {host} is already in use (another Rapport, or another "
                "program). Stop it, or choose another port with --port or RAPPORT_PORT."
            ) from exc
        raise PortUnavailable(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc
    return sock


class PortUnavailable(Exception):
    pass


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    try:
        sock = _bind(settings.host, settings.port)
    except PortUnavailable as exc:
        print(f"rapport: {exc}", file=sys.stderr)
        return 1
    from .logs import configure, socket_log_level, uvicorn_log_config

    configure(settings.log_level, settings.log_json)
    log.info("loading the server (first start after an install takes a while)")
    from .app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # uvicorn applies this to its loggers after log_config; never debug (frame texts).
        log_level=socket_log_level(settings.log_level).lower(),
        # Our formatter for uvicorn's lines; its access log is replaced by ours.
        log_config=uvicorn_log_config(settings.log_level),
        access_log=False,
        # The transport drops a frame over 4x the message limit (close 1009) before reading it
        # into memory; a frame a little over the limit still reaches the room, which answers
        # with a precise `too_large` error and counts it against the sender's flood budget.
        ws_max_size=4 * settings.max_message_bytes,
        proxy_headers=True,
        # Only reached after a drain or a second signal: do not hang on a stuck connection.
        timeout_graceful_shutdown=5,
    )
    DrainingServer(config, app).run(sockets=[sock])
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains instead of shutting down.

    uvicorn closes its port and every socket on the first signal, cutting live calls. Here the
    first signal starts the app's drain (not ready, no new joins, calls continue until they end
    or the deadline, then flush and close), and uvicorn's own shutdown follows it. A second
    signal hurries the drain: the rooms are closed with what can be flushed at once.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            self._announce()

    def _announce(self) -> None:
        """Where to go, said only once the port is listening (a link printed before that led
        people to a page that did not load, or to a port another program held)."""
        from .logs import emit_banner

        settings: Settings = self.app.state.settings
        url = settings.public("/")
        database = database_location(settings.database_url)
        emit_banner(
            [f"Rapport is running: open {url} in a browser.", f"Database: {database}"],
            settings.log_json,
            url=url,
            database=database,
        )
        link = getattr(self.app.state, "setup_link", None)
        if link:
            emit_banner(
                ["No accounts yet. Create the first one here (valid 24 h, once):", link],
                settings.log_json,
                setup_url=link,
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: it re-raises those after shutdown, and
        # the process would then die of the signal instead of exiting cleanly after the drain.
        if self._loop is None or not self.started or self.should_exit:
            # Before start-up, or a third signal while uvicorn shuts down: uvicorn's way.
            self.force_exit = self.should_exit
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        from .app import start_drain

        name = signal.Signals(sig).name
        if self._drain_task is None:
            log.warning("%s received: draining", name)
            drain = start_drain(self.app)
            self._drain_task = asyncio.ensure_future(self._drain(drain.run()))
        else:
            log.warning("%s received again: exiting now", name)
            self.app.state.drain.hurry()

    async def _drain(self, run: Coroutine[Any, Any, None]) -> None:
        try:
            await run
        except Exception:
            log.exception("drain failed; shutting down")
        finally:
            self.should_exit = True


def _read_password(confirm: bool) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != password:
            raise SystemExit("Passwords do not match.")
        return password
    return sys.stdin.readline().rstrip("\r\n")


async def _add_user(email: str, role: str, name: str, password: str) -> int:
    database = Database(Settings().database_url)
    try:
        await database.create_schema()
        async with database.session() as db:
            exists = await db.scalar(
                select(func.count())
                .select_from(User)
                .where(func.lower(User.email) == email.lower())
            )
            if exists:
                print(f"A user with email {email} already exists.", file=sys.stderr)
                return 1
            db.add(
                User(
                    email=email.lower(),
                    display_name=name,
                    role=UserRole(role),
                    password_hash=hash_password(password),
                )
            )
            from .audit import record

            record(db, "user_created", "cli", detail=f"role {role}")
            await db.commit()
    finally:
        await database.dispose()
    print(f"Created {role} {email}.")
    return 0


def _user_add(args: argparse.Namespace) -> int:
    password = _read_password(confirm=True)
    if not valid_email(args.email):
        print("That does not look like an email address.", file=sys.stderr)
        return 2
    problem = password_problem(password, args.email)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    return asyncio.run(_add_user(args.email, args.role, args.name or "", password))


async def _reset_two_factor(email: str) -> int:
    from .audit import record
    from .totp import clear_two_factor

    database = Database(Settings().database_url)
    try:
        await database.create_schema()
        async with database.session() as db:
            user = await db.scalar(select(User).where(func.lower(User.email) == email.lower()))
            if user is None:
                print(f"No user with email {email}.", file=sys.stderr)
                return 1
            user_id = user.id
            await clear_two_factor(db, user_id)
            record(db, "two_factor_reset", "cli", detail=f"user:{user_id}")
            await db.commit()
    finally:
        await database.dispose()
    print(
        f"Two-factor sign-in is off for {email}; they sign in with their password and can "
        "set it up again (it is required again at once if the admins require it)."
    )
    return 0


def _user_reset_two_factor(args: argparse.Namespace) -> int:
    return asyncio.run(_reset_two_factor(args.email))


def _analyze(args: argparse.Namespace) -> int:
    import json

    from media import analyze_files, snapshot_json, voice_tuning

    # The live path's voice activity: RAPPORT_SILERO_ASSIST decides for both.
    tuning = voice_tuning(Settings().silero_assist)
    snapshot = analyze_files(args.therapist, args.client, vad_tuning=tuning)
    print(json.dumps(snapshot_json(snapshot), indent=2))
    return 0


def _bench_signals(args: argparse.Namespace) -> int:
    from server.bench.signals import main as bench_main

    assist = None if args.silero_assist is None else args.silero_assist == "on"
    return bench_main(args.onsets, args.json, args.media_workers, assist)


def _bench(args: argparse.Namespace) -> int:
    from server.bench.relay import run_from_args

    return run_from_args(args)


async def _audit_verify() -> int:
    from .audit import verify_chain

    database = Database(Settings().database_url)
    try:
        await database.create_schema()
        result = await verify_chain(database)
    finally:
        await database.dispose()
    if not result.ok:
        at = result.broken_at.isoformat() if result.broken_at else "?"
        print(
            f"BROKEN: audit entry {result.broken_id} ({at}) {result.problem}; "
            f"the {result.entries} entries before it are intact.",
            file=sys.stderr,
        )
        return 1
    print(f"OK: {result.entries} audit entries, chain intact; head {result.head}")
    if result.sealed_before_chain:
        sealed = result.sealed_at.isoformat() if result.sealed_at else "?"
        print(
            f"  The first {result.sealed_before_chain} entries were written before the chain "
            f"existed and sealed at the upgrade ({sealed}): changes to them since then would "
            "show, changes before then cannot."
        )
    return 0


def _audit(args: argparse.Namespace) -> int:
    return asyncio.run(_audit_verify())


async def _purge(days: int, yes: bool) -> int:
    from .retention import purge

    database = Database(Settings().database_url)
    try:
        await database.create_schema()
        async with database.session() as db:
            counts = await purge(db, days, dry_run=not yes)
    finally:
        await database.dispose()
    if yes:
        print(f"Deleted data of sessions ended over {days} days ago: {counts.describe()}.")
    else:
        print(
            f"Would delete data of sessions ended over {days} days ago: {counts.describe()}. "
            "Nothing deleted; run with --yes to delete."
        )
    return 0


def _purge_cmd(args: argparse.Namespace) -> int:
    days = args.days if args.days is not None else Settings().retention_days
    if days is None:
        print(
            "No retention period: set RAPPORT_RETENTION_DAYS or pass --days. Nothing deleted.",
            file=sys.stderr,
        )
        return 2
    if days < 1:
        print("--days must be at least 1.", file=sys.stderr)
        return 2
    return asyncio.run(_purge(days, args.yes))


# --- db: migrations and backups ---
def _db_upgrade(args: argparse.Namespace) -> int:
    from .migrations import RepairError, upgrade

    url = Settings().database_url
    print(f"Database: {database_location(url)}")
    try:
        result = asyncio.run(upgrade(url))
    except RepairError as exc:
        print(f"Upgrade stopped, nothing changed: {exc}", file=sys.stderr)
        return 1
    print(result.describe())
    return 0


def _db_current(args: argparse.Namespace) -> int:
    from .migrations import current, head_revision

    url = Settings().database_url
    revision, unversioned = asyncio.run(current(url))
    head = head_revision()
    print(f"Database: {database_location(url)}")
    if unversioned:
        print(
            "Revision: none (made before migrations; `rapport db upgrade` repairs and stamps "
            f"it), head {head}"
        )
        return 0
    state = "head" if revision == head else f"head is {head}; run `rapport db upgrade`"
    print(f"Revision: {revision or 'none (empty database)'} ({state})")
    return 0


def _backup(args: argparse.Namespace) -> int:
    from .backup import BackupError, backup

    try:
        done = backup(Settings().database_url, args.path)
    except BackupError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    print(done.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rapport", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default RAPPORT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default RAPPORT_PORT or 8000)")
    serve.set_defaults(func=_serve)

    user = sub.add_parser("user", help="manage accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create an account; the password is read from stdin")
    add.add_argument("email")
    add.add_argument("--role", choices=["therapist", "admin"], required=True)
    add.add_argument("--name", help="display name")
    add.set_defaults(func=_user_add)
    reset = user_sub.add_parser(
        "reset-2fa",
        help="turn two-factor sign-in off for a locked-out user (their recovery codes too)",
    )
    reset.add_argument("email")
    reset.set_defaults(func=_user_reset_two_factor)
    audit = sub.add_parser("audit", help="the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the hash chain; exit 1 at the first broken entry"
    )
    verify.set_defaults(func=_audit)

    db = sub.add_parser("db", help="the database schema (migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser(
        "upgrade", help="migrate the database to the newest schema (safe beside running servers)"
    ).set_defaults(func=_db_upgrade)
    db_sub.add_parser("current", help="print the database's schema revision").set_defaults(
        func=_db_current
    )
    backup = sub.add_parser(
        "backup", help="consistent copy of the SQLite database, safe while the server runs"
    )
    backup.add_argument("path", help="file to write (or a directory to write a dated file in)")
    backup.set_defaults(func=_backup)

    purge = sub.add_parser(
        "purge", help="erase sessions ended longer ago than RAPPORT_RETENTION_DAYS (dry run)"
    )
    purge.add_argument("--days", type=int, help="override RAPPORT_RETENTION_DAYS")
    purge.add_argument("--yes", action="store_true", help="delete (default: only count)")
    purge.set_defaults(func=_purge_cmd)

    analyze = sub.add_parser("analyze", help="alliance signals of two recorded tracks, as JSON")
    analyze.add_argument("therapist", help="the therapist's audio file")
    analyze.add_argument("client", help="the client's audio file")
    analyze.set_defaults(func=_analyze)

    bench_signals = sub.add_parser(
        "bench-signals", help="measure speech onset → therapist's speaking indicator latency"
    )
    bench_signals.add_argument("--onsets", type=int, default=10)
    bench_signals.add_argument("--json", help="also write the figures to this JSON file")
    bench_signals.add_argument(
        "--media-workers",
        type=int,
        default=None,
        help="media worker processes (default: one per core; 0: media in the server process)",
    )
    bench_signals.add_argument(
        "--silero-assist",
        choices=("on", "off"),
        default=None,
        help="Silero VAD's assist on or off (default: the silero_assist setting)",
    )
    bench_signals.set_defaults(func=_bench_signals)

    from server.bench.relay import add_arguments

    bench = sub.add_parser("bench", help="media relay capacity: forwarding vs transcoding")
    add_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

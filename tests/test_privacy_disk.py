"""No audio or video is ever written to disk: proven on a real call, not promised.

`rapport serve` runs as deployed (its own process and a media worker process) while two
aiortc peers exchange audio and video through it. During the call the test lists, several
times, every file descriptor of the server and of each of its child processes
(``/proc/PID/fd``), and before/after it lists every file under the server's data and temp
directories, the repository, ``/tmp`` and ``/dev/shm``. Allowed: the SQLite database with
its WAL and SHM, the server's log, and Python's bytecode caches. Anything else (a regular
file open for writing, a deleted-but-open temp file, a new file anywhere we look, or a
media-looking file in the shared temp dirs) fails the test with its path.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.media_helpers import ColorTrack, FakeBrowser, ToneTrack
from tests.server_process import REPO_ROOT, rapport_server_process
from tests.signaling_helpers import open_room

# Magic numbers of the containers and raw formats a recording would use.
MEDIA_MAGIC = (
    b"RIFF",  # WAV / AVI
    b"OggS",  # Ogg Opus / Vorbis
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM
    b"DKIF",  # IVF (raw VP8/VP9)
    b"fLaC",
    b"ID3",
    b"#!AMR",
)
MEDIA_SUFFIXES = {
    ".wav", ".ogg", ".opus", ".webm", ".mkv", ".mp4", ".m4a", ".mp3", ".ivf", ".pcm",
    ".raw", ".h264", ".y4m", ".yuv", ".avi", ".flac", ".amr",
}  # fmt: skip
KINDS = ("audio", "video")
SCAN_SHARED = (Path(tempfile.gettempdir()), Path("/dev/shm"))


@dataclass(frozen=True)
class OpenFile:
    pid: int
    fd: int
    target: str
    writable: bool


def child_pids(pid: int) -> set[int]:
    """Every descendant of ``pid`` (media workers and anything they started)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def open_files(pids: Iterable[int]) -> list[OpenFile]:
    """Each descriptor that names a path (sockets, pipes, anon inodes and the like do not)."""
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                flags = int(
                    Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8
                )
            except (OSError, IndexError, ValueError):
                continue  # closed between listing and reading
            if target.startswith("/"):
                writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
                out.append(OpenFile(pid, int(fd), target, writable))
    return out


def files_under(roots: Iterable[Path], skip: tuple[str, ...] = ()) -> dict[Path, float]:
    """Every file under ``roots`` with its mtime; directories named in ``skip`` (or starting
    with one of them) are not entered."""
    found: dict[Path, float] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda _e: None):
            dirnames[:] = [d for d in dirnames if not d.startswith(skip)]
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    found[path] = path.lstat().st_mtime
                except OSError:
                    continue
    return found


def looks_like_media(path: Path) -> bool:
    if path.suffix.lower() in MEDIA_SUFFIXES:
        return True
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(MEDIA_MAGIC) or head[4:8] == b"ftyp"  # MP4 / MOV / 3GP


def unexpected_fds(files: list[OpenFile], allowed: set[str]) -> list[OpenFile]:
    """Regular files other than the allowed ones; any open deleted file; any media file."""
    bad = []
    for f in files:
        if f.target.endswith(" (deleted)"):
            bad.append(f)
        elif f.target.startswith(("/dev/", "/proc/", "/sys/")):
            continue  # /dev/null, /dev/urandom, /proc/self/... (reads of the kernel)
        elif f.target not in allowed and (f.writable or looks_like_media(Path(f.target))):
            bad.append(f)
    return bad


def test_the_scanner_sees_a_recording(tmp_path: Path) -> None:
    """The detector is not vacuous: a media file open for writing, or deleted while open, or
    left in a watched directory, is reported (by path, for this very process)."""
    before = files_under([tmp_path])
    recording = tmp_path / "call.bin"
    with recording.open("wb") as f:
        f.write(b"OggS\x00\x02" + bytes(100))
        f.flush()
        bad = unexpected_fds(open_files([os.getpid()]), allowed=set())
        assert str(recording) in [b.target for b in bad]
        recording.unlink()
        bad = unexpected_fds(open_files([os.getpid()]), allowed=set())
        assert f"{recording} (deleted)" in [b.target for b in bad]
    leftover = tmp_path / "audio.raw"
    leftover.write_bytes(bytes(10))
    new = set(files_under([tmp_path])) - set(before)
    assert new == {leftover} and looks_like_media(leftover)


async def test_no_audio_or_video_reaches_the_disk_during_a_real_call(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server_tmp = tmp_path / "tmp"  # the server's TMPDIR: anything it makes via tempfile
    data.mkdir()
    server_tmp.mkdir()
    # Other test runs (pytest's own temp dirs) write fixtures there; ours is checked strictly.
    shared_before = files_under(SCAN_SHARED, skip=("pytest-of-",))
    repo_before = files_under([REPO_ROOT], skip=(".git",))
    env = {"RAPPORT_MEDIA_WORKERS": "1", "TMPDIR": str(server_tmp)}
    with rapport_server_process(data, env) as server:
        db = data / "rapport.db"
        allowed = {str(db), f"{db}-wal", f"{db}-shm", f"{db}-journal", str(server.log_path)}
        allowed.add(f"{db}.migrate-lock")  # empty; flock'ed only while migrating at start
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as therapist:
            email, password = server.users["therapist"]
            response = await therapist.post(
                "/api/login", json={"email": email, "password": password}
            )
            assert response.status_code == 200, response.text
            _session, t, c, _ = await open_room(server.ws_url, therapist)
            try:
                await t.start_media(FakeBrowser(ToneTrack(440), ColorTrack((200, 0, 0))))
                await c.start_media(FakeBrowser(ToneTrack(660), ColorTrack((0, 0, 200))))
                assert t.browser is not None and c.browser is not None
                await t.browser.wait_for("video", 20)
                await c.browser.wait_for("audio", 50)
                await asyncio.gather(
                    *(b.wait_for(k, 5) for b in (t.browser, c.browser) for k in KINDS)
                )
                pids = {server.process.pid} | child_pids(server.process.pid)
                assert len(pids) >= 2, "no media worker process"
                seen: dict[str, OpenFile] = {}
                bad: list[OpenFile] = []
                # Four seconds of media both ways, both kinds, through the server (each
                # round checks that new frames arrived), every descriptor looked at as it flows.
                for _ in range(8):
                    files = open_files(pids)
                    seen.update((f.target, f) for f in files)
                    bad += unexpected_fds(files, allowed)
                    newest = [b.received[k][-1] for b in (t.browser, c.browser) for k in KINDS]
                    await asyncio.sleep(0.5)
                    now = [b.received[k][-1] for b in (t.browser, c.browser) for k in KINDS]
                    flowing = [x is not y for x, y in zip(newest, now, strict=True)]
                    assert all(flowing), f"media stopped flowing: {flowing}"
                print(
                    f"{len(pids)} processes; paths open during the call: "
                    + ", ".join(sorted({Path(p).name for p in seen}))
                )
                assert not bad, bad
            finally:
                await t.close()
                await c.close()
        data_files = set(files_under([data, server_tmp]))
    new_here = {p for p in data_files if str(p) not in allowed}
    assert not new_here, new_here
    repo_new = {
        p
        for p, mtime in files_under([REPO_ROOT], skip=(".git",)).items()
        if repo_before.get(p) != mtime and "__pycache__" not in p.parts
    }
    assert not repo_new, repo_new
    shared_new = set(files_under(SCAN_SHARED, skip=("pytest-of-",))) - set(shared_before)
    # The shared temp dirs see other programs' files too: none may look like media.
    assert not [p for p in shared_new if looks_like_media(p)], shared_new

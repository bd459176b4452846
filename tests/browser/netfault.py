"""Cut one browser's network for real, both its signalling socket and its media.

DevTools' offline switch does not stop WebRTC, and a browser in its own network namespace could
not reach a server bound to 127.0.0.1. So the browser that should lose its network runs as its
own user id (``CUT_UID``), and an nftables table of our own marks every connection that user
opens (``ct mark``). Cutting adds one rule that drops every packet of a marked connection, in
both directions (the server's replies belong to the same conntrack entry); restoring deletes it.
Nothing else on the machine is touched, and the table is removed on exit.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

CUT_UID = 4321  # an unused id, no passwd entry needed
MARK = "0x5241"  # "RA"

WRAPPER = """#!/bin/sh
# Run chromium as uid {uid}: hand it the profile Playwright made for root first.
for arg in "$@"; do
  case "$arg" in --user-data-dir=*) chown -R {uid}:{uid} "${{arg#--user-data-dir=}}" ;; esac
done
export HOME={home}
exec setpriv --reuid={uid} --regid={uid} --clear-groups {chromium} "$@"
"""


def chromium_as_cut_user(chromium: str, workdir: Path) -> Path:
    """A wrapper executable that Playwright can launch instead of chromium."""
    home = workdir / "cut-home"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, CUT_UID, CUT_UID)
    # The fake microphone files and anything else the browser reads must be reachable.
    for parent in (workdir, *workdir.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)
    script = workdir / "chromium-cut-user"
    script.write_text(WRAPPER.format(uid=CUT_UID, home=home, chromium=chromium))
    script.chmod(0o755)
    return script


def nft_available() -> bool:
    return shutil.which("nft") is not None and shutil.which("setpriv") is not None


def _nft(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["nft", *args], input=stdin, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout


@dataclass
class NetworkCut:
    """An nftables table that can cut ``CUT_UID``'s connections on demand."""

    table: str = field(default_factory=lambda: f"rapport_cut_{os.getpid()}")
    _drop_handle: str | None = None

    def __enter__(self) -> NetworkCut:
        _nft(
            "-f",
            "-",
            stdin=(
                f"table inet {self.table} {{\n"
                "  chain out {\n"
                "    type filter hook output priority 0; policy accept;\n"
                f"    meta skuid {CUT_UID} ct mark set {MARK}\n"
                "  }\n"
                "}\n"
            ),
        )
        return self

    def cut(self, *, udp_only: bool = False) -> None:
        """Drop the marked connections' packets; ``udp_only`` drops only their UDP (the
        media), leaving TCP (the signalling socket) alone, as a path that loses its media."""
        if self._drop_handle is not None:
            return
        match = ("meta", "l4proto", "udp") if udp_only else ()
        out = _nft(
            "--echo",
            "--handle",
            "add",
            "rule",
            "inet",
            self.table,
            "out",
            *match,
            "ct",
            "mark",
            MARK,
            "counter",
            "drop",
        )
        self._drop_handle = out.rsplit("# handle", 1)[1].strip().split()[0]

    def restore(self) -> None:
        if self._drop_handle is None:
            return
        _nft("delete", "rule", "inet", self.table, "out", "handle", self._drop_handle)
        self._drop_handle = None

    def dropped_packets(self) -> int:
        """How many packets the cut dropped (0 when not cut): proof the cut bit."""
        if self._drop_handle is None:
            return 0
        listing = _nft("list", "chain", "inet", self.table, "out")
        for line in listing.splitlines():
            if "drop" in line and "packets" in line:
                return int(line.split("packets", 1)[1].split()[0])
        return 0

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subprocess.run(
            ["nft", "delete", "table", "inet", self.table],
            capture_output=True,
            check=False,
            timeout=10,
        )

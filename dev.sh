#!/usr/bin/env bash
# Rapport's two entry points on a fresh Debian machine (Python 3.11, as root):
#   ./dev.sh serve [--host H --port P]   start Rapport on SQLite in RAPPORT_DATA_DIR (see README)
#   ./dev.sh test  [pytest args]         install test tools and run every test
#                                        (RAPPORT_COVERAGE=1 adds a coverage summary)
# Both create ./.venv and install the project into it first (only when pyproject changed).
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP="$VENV/.rapport-installed"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "Need root to run: $*" >&2; exit 1; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >&2
  fi
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  local want
  want="$(cat pyproject.toml | sha256sum | cut -c1-16)-$1"
  local have
  have="$(cat "$STAMP" 2>/dev/null || true)"
  if [ "$have" != "$want" ] && ! { [ "$1" = run ] && [ "$have" = "${want%-run}-test" ]; }; then
    # Said before the minute of silence a first install takes; pip's and the build backend's
    # output (setuptools' warning boxes) goes to a log, shown only if the install fails.
    echo "Installing Rapport and its Python packages into $VENV (first start or pyproject" \
      "changed; about a minute)..." >&2
    local log="$VENV/install.log" spec=.
    [ "$1" = test ] && spec=".[test]"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip \
        && "$VENV/bin/python" -m pip install -q -e "$spec"; } >"$log" 2>&1; then
      cat "$log" >&2
      echo "Installing failed (the output above is also in $log)." >&2
      exit 1
    fi
    echo "Installed." >&2
    echo "$want" > "$STAMP"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  serve)
    ensure_venv run
    # A test install is a superset; keep it rather than reinstalling.
    exec "$VENV/bin/rapport" serve "$@"
    ;;
  test)
    apt_install chromium espeak-ng sox asterisk-core-sounds-en-wav pocketsphinx-testdata nftables coturn firefox-esr \
      postgresql redis-server prometheus
    ensure_venv test
    # Coverage of our three packages on request: it slows the CPU-bound signal tests by a
    # fifth to a third (measured: 196-207 s -> 239-280 s for the accuracy, attribution,
    # background, forwarding and database tests: 43-73 s of them), and the whole suite
    # must stay under 25 minutes on a 2-core machine. Media worker processes are not
    # measured.
    cov=()
    if [ "${RAPPORT_COVERAGE:-0}" != 0 ]; then
      cov=(--cov=server --cov=signaling --cov=media --cov-report=term:skip-covered)
    fi
    exec "$VENV/bin/python" -m pytest "${cov[@]}" "$@"
    ;;
  *)
    echo "usage: ./dev.sh serve [--host H --port P] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac

#!/bin/sh
# `rapport` inside the image: the CLI from the source tree (the image installs the locked
# dependencies, not the project itself, so no build backend is needed at build time).
exec /opt/rapport/bin/python -m server.cli "$@"

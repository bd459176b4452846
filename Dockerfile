# syntax=docker/dockerfile:1
# Rapport server image: `docker build -t rapport .` (deploy/compose.yaml runs it with
# PostgreSQL and coturn). Media (UDP) needs host networking or a TURN server: see README.

# --- build: the dependencies, exactly as locked (pip checks every file's SHA-256) ---------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/rapport
COPY requirements.lock /tmp/requirements.lock
RUN /opt/rapport/bin/pip install --require-hashes --no-deps --only-binary=:all: \
      -r /tmp/requirements.lock

# --- runtime: the venv and the source, no build tools, no pip cache, not root -------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/rapport/bin:$PATH \
    PYTHONPATH=/app \
    RAPPORT_HOST=0.0.0.0 \
    RAPPORT_PORT=8000 \
    RAPPORT_LOG_JSON=true \
    RAPPORT_WEB_DIR=/app/web \
    RAPPORT_DATABASE_URL=sqlite+aiosqlite:////data/rapport.db

COPY --from=build /opt/rapport /opt/rapport
WORKDIR /app
COPY server ./server
COPY signaling ./signaling
COPY media ./media
COPY web ./web
COPY deploy/rapport.sh /usr/local/bin/rapport
RUN chmod 0755 /usr/local/bin/rapport \
 && python -m compileall -q /app/server /app/signaling /app/media \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin rapport \
 && mkdir -p /data && chown rapport /data

USER 10001
VOLUME ["/data"]
EXPOSE 8000
# Ready, not merely up: /readyz answers 503 while the database is unreachable, no media
# worker is alive, or the server is draining for a restart.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('RAPPORT_PORT','8000'), timeout=4)"]
# SIGTERM drains (live calls continue until they end or RAPPORT_DRAIN_TIMEOUT_S): give the
# container runtime a stop timeout to match (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["rapport", "serve"]

# Rapport server image. Media (UDP) needs either host networking or a TURN server: see README.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RAPPORT_HOST=0.0.0.0 \
    RAPPORT_PORT=8000 \
    RAPPORT_DATABASE_URL=sqlite+aiosqlite:////data/rapport.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY signaling ./signaling
COPY media ./media
COPY web ./web
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin rapport \
 && mkdir -p /data && chown rapport /data

USER rapport
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RAPPORT_PORT','8000'), timeout=4)"]
ENV RAPPORT_WEB_DIR=/app/web
CMD ["rapport", "serve"]

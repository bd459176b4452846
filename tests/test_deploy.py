"""What ships under deploy/ and the container files, checked without Docker or Grafana.

Alert rules go through Debian's promtool (syntax and unit tests); the dashboard through a
minimal JSON schema of what Grafana needs to import it; both against the metric names the
server's /metrics really exposes, so a renamed metric cannot leave a silent panel or an alert
that never fires. The Dockerfile and lock file are checked statically (no Docker here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import InProcessApp

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "rapport-dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# Series Prometheus makes itself, not the server.
SYNTHETIC = {"up"}
# PromQL words that look like metric names in an expression.
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "and", "or", "unless", "on",
    "ignoring", "max", "min", "avg", "count", "without", "le", "label_values",
}  # fmt: skip

# What Grafana needs to import a dashboard and draw its panels.
DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "templating": {
            "type": "object",
            "properties": {
                "list": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "type"]},
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"type": "string"},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr", "refId"],
                            "properties": {"expr": {"type": "string", "minLength": 1}},
                        },
                    },
                },
                "if": {"properties": {"type": {"not": {"const": "row"}}}},
                "then": {"required": ["targets", "datasource"]},
            },
        },
    },
}


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = _promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    tested = _promtool("test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_prometheus_example_config_is_valid(tmp_path: Path) -> None:
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    token = tmp_path / "metrics_token"
    token.write_text("example")
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/metrics_token", str(token))
    )
    shutil.copy(RULES, tmp_path / RULES.name)
    checked = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("quality", "5xx", "latency", "worker", "loop lag", "sessions"):
        assert topic in titles, f"no panel about {topic}"


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SERIES, LABEL): the series only
            exprs.append(re.sub(r"label_values\((.*),\s*\w+\)$", r"\1", variable["query"]))
    return exprs


def metric_names(expr: str) -> set[str]:
    """Identifiers used as series names: not label names (before = or in by (...)), not
    functions, not label values or durations."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "{}", text)  # matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"e\d*", n)}


async def exposed_series(api: InProcessApp) -> set[str]:
    async with api.client() as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    series: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
    }
    for family in text_string_to_metric_families(response.text):
        series.add(family.name)
        series.update(family.name + s for s in suffixes.get(family.type, ()))
    return series


async def test_every_metric_the_dashboard_and_rules_use_is_exposed(api: InProcessApp) -> None:
    # The extraction sees series names only (not labels, functions, values or durations).
    assert metric_names(
        'sum by (route) (rate(rapport_http_requests_total{status=~"5..", job="x"}[5m]))'
        " / histogram_quantile(0.95, sum by (le) (rate(b_bucket[5m]))) > 0.05"
    ) == {"rapport_http_requests_total", "b_bucket"}
    exposed = await exposed_series(api)
    used = {name for expr in _rule_exprs() + _dashboard_exprs() for name in metric_names(expr)}
    assert {"rapport_http_requests_total", "rapport_media_worker_alive"} <= used
    missing = used - exposed - SYNTHETIC
    assert not missing, f"used but not exposed by /metrics: {sorted(missing)}"


# --------------------------------------------------------------------------- container
def _dockerfile() -> list[str]:
    """Instructions, with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_dockerfile_is_multi_stage_non_root_ready_checked_and_copies_what_exists() -> None:
    lines = _dockerfile()
    stages = [line for line in lines if line.upper().startswith("FROM ")]
    assert len(stages) >= 2 and all(" AS " in s.upper() for s in stages), stages
    copies = [line.split()[1:] for line in lines if line.upper().startswith("COPY ")]
    for args in copies:
        if any(a.startswith("--from=") for a in args):
            continue
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    user = next(line for line in reversed(lines) if line.upper().startswith("USER "))
    assert user.split()[1] not in ("root", "0"), user
    health = next(line for line in lines if line.upper().startswith("HEALTHCHECK "))
    assert "/readyz" in health
    install = next(line for line in lines if "-r /tmp/requirements.lock" in line)
    assert "--require-hashes" in install


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "**", "deny everything, then allow what the Dockerfile copies"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = {
        source.rstrip("/")
        for line in _dockerfile()
        if line.upper().startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    assert copied <= allowed, copied - allowed
    assert not {"data", ".venv", "tests", ".git"} & allowed


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from requirements.lock."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    locked: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *rest = line.split()
        name, _, version = spec.partition("==")
        assert version, f"not pinned: {line[:80]}"
        hashes = [r.removeprefix("--hash=sha256:") for r in rest if r.startswith("--hash=")]
        locked[canonicalize_name(name)] = (version, hashes)
    return locked


def test_the_lock_file_pins_every_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = _locked()
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in requirements.lock"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (line, version)
    for locked_name, (_, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), locked_name
    # The test tools stay out of the image.
    assert "pytest" not in locked and "playwright" not in locked


def test_compose_runs_rapport_with_postgresql_and_coturn() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"rapport", "postgres", "coturn"} <= services.keys()
    rapport = services["rapport"]
    assert (DEPLOY / rapport["build"]["context"] / rapport["build"]["dockerfile"]).exists()
    env = rapport["environment"]
    assert env["RAPPORT_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["RAPPORT_TURN_SECRET"] and env["RAPPORT_TURN_URLS"].startswith("turn:")
    assert rapport["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "--use-auth-secret" in services["coturn"]["command"]

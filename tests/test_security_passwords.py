"""Common and guessable passwords are refused wherever a password is set (issue 12, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import Type, extract_parameters
from argon2.profiles import RFC_9106_LOW_MEMORY

from server import security
from server.app import first_run_setup_link
from server.db import Database
from server.security import hash_password, password_problem, verify_password
from tests.conftest import InProcessApp, fixture_password_hash

REPO = Path(__file__).resolve().parent.parent

WEAK = {
    "short1": "at least 10 characters",
    "1234567890": "only digits",
    "98765432101234": "only digits",
    "qwertyuiop": "most common",
    "Password123": "most common",
    "aaaaaaaaaaaa": "repeats",
    "abababababab": "repeats",
    "asdfghjkl": "at least 10",
    "poiuytrewq": "run of keys",
    "Welcome!2026": "common word",
    "rapport-2026!": "common word",
    "jane.doe@example.org": "email address",
    "zxcvbnmasdfghjkl"[:7] + "123": "most common",
}
STRONG = ["correct horse battery", "a long and unusual passphrase", "Tea at 4, bikes at 6"]


@pytest.mark.parametrize(("password", "reason"), sorted(WEAK.items()))
def test_weak_passwords_are_refused_with_a_reason(password: str, reason: str) -> None:
    problem = password_problem(password, "jane.doe@example.org")
    assert problem is not None and reason in problem, problem


def test_strong_passwords_pass() -> None:
    assert [password_problem(p, "jane.doe@example.org") for p in STRONG] == [None] * len(STRONG)
    assert password_problem("jane.doe.reads.poems", "jane.doe@example.org") is None
    assert password_problem("Janedoe!!2024", "jane.doe@example.org") is None  # not the local part
    assert "email" in (password_problem("JaneDoe2024", "janedoe@example.org") or "")


def test_the_server_hashes_at_full_cost_and_verifies_cheap_fixture_hashes_too() -> None:
    """The suite's fixture accounts carry a cheap hash (tests/conftest.py) so that signing in
    costs little; what the server stores is argon2id at the RFC 9106 low-memory cost."""
    stored = extract_parameters(hash_password("correct horse battery"))
    assert stored.type is Type.ID
    assert stored.time_cost >= RFC_9106_LOW_MEMORY.time_cost
    assert stored.memory_cost >= RFC_9106_LOW_MEMORY.memory_cost
    # Unknown emails are verified against a stand-in of the same cost (equal response times).
    assert extract_parameters(security._DUMMY_HASH) == stored
    cheap = fixture_password_hash()
    assert verify_password(cheap, "correct horse battery")
    assert not verify_password(cheap, "correct horse batterY")


async def test_setup_refuses_a_common_password(api: InProcessApp) -> None:
    database = Database(api.settings.database_url)
    link = await first_run_setup_link(database, api.settings)
    await database.dispose()
    assert link is not None
    body = {"token": link.rsplit("/", 1)[1], "email": "ops@example.org", "role": "admin"}
    async with api.client() as client:
        r = await client.post("/api/setup", json={**body, "password": "1234567890"})
        assert r.status_code == 422
        assert "only digits" in r.json()["detail"][0]["msg"]
        r = await client.post("/api/setup", json={**body, "password": "ops@example.org"})
        assert r.status_code == 422
        assert "email" in r.json()["detail"][0]["msg"]
        # The link is not used up by a refusal.
        r = await client.post("/api/setup", json={**body, "password": "correct horse battery"})
        assert r.status_code == 201, r.text


def test_cli_user_add_refuses_a_common_password(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAPPORT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'rapport.db'}",
    }
    command = [sys.executable, "-m", "server.cli", "user", "add", "t@example.org"]
    weak = subprocess.run(
        [*command, "--role", "therapist"],
        input="password123\n",
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert weak.returncode == 2
    assert "most common" in weak.stderr
    good = subprocess.run(
        [*command, "--role", "therapist"],
        input="correct horse battery\n",
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stderr

"""Settings read from the environment in the forms the README documents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.settings import Settings, usable_cores


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1, ::1", '["127.0.0.1", "::1"]'])
def test_media_addresses_accept_plain_comma_and_json(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RAPPORT_MEDIA_ADDRESSES", value)
    assert Settings().media_addresses[0] == "127.0.0.1"


def test_ice_servers_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "RAPPORT_ICE_SERVERS",
        '[{"urls": "turn:turn.example.org:3478", "username": "u", "credential": "p"}]',
    )
    assert Settings().ice_servers[0]["username"] == "u"
    monkeypatch.setenv("RAPPORT_ICE_SERVERS", "")
    assert Settings().ice_servers == []


def test_a_malformed_ice_server_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry without ``urls`` would otherwise surface at the first join, as a broken call."""
    monkeypatch.setenv("RAPPORT_ICE_SERVERS", '[{"url": "turn:turn.example.org"}]')
    with pytest.raises(ValueError, match="urls"):
        Settings()


def test_secure_cookies_follow_the_public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_PUBLIC_URL", "https://therapy.example.org")
    assert Settings().cookie_secure is True
    monkeypatch.setenv("RAPPORT_PUBLIC_URL", "http://127.0.0.1:8000")
    assert Settings().cookie_secure is False


def test_public_url_follows_the_served_address_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPPORT_PUBLIC_URL", raising=False)
    assert Settings(port=8799).public_url == "http://127.0.0.1:8799"
    assert Settings(host="0.0.0.0", port=9000).public_url == "http://127.0.0.1:9000"
    monkeypatch.setenv("RAPPORT_PUBLIC_URL", "https://therapy.example.org")
    assert Settings(port=8799).public_url == "https://therapy.example.org"


def test_default_media_workers_follow_the_cpu_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "missing") == affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a core still gets one worker
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 5) * 100000} 100000\n")  # a quota above the CPUs
    assert usable_cores(cpu_max) == affinity
    assert Settings(media_workers=0).media_worker_count == 0
    assert Settings().media_worker_count == usable_cores()

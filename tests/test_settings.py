"""Settings read from the environment in the forms the README documents."""

from __future__ import annotations

import pytest

from server.settings import Settings


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

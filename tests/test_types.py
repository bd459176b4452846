"""One definition of each shared type, and error codes that cannot drift from the protocol.

The wire vocabulary (roles, media states, error codes) used to be re-declared per module as
string literals, so a new code or a typo reached the browser without any check. These tests
pin the single definitions and scan the senders, so a regression fails here rather than in a
browser that silently ignores an unknown code.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from media import ROLES, Role, SnapshotPayload, snapshot_from_json, snapshot_json
from media.alliance.engine import Snapshot, WindowTotals
from media.alliance.payload import WindowPayload
from signaling.messages import ErrorCode, ErrorMessage, Joined, PeerState, Signals, Welcome

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ROOT = Path(__file__).resolve().parent.parent
# Functions whose ``code`` (second positional argument, or ``code=``) is an error code.
_ERROR_SENDERS = {"_error": 1, "_refuse": 1, "ErrorMessage": None}


def _sources() -> list[Path]:
    return sorted(
        p for package in ("server", "signaling", "media") for p in (ROOT / package).rglob("*.py")
    )


def _code_argument(call: ast.Call, position: int | None) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "code":
            return keyword.value
    if position is not None and len(call.args) > position:
        return call.args[position]
    return None


def _error_code_names(node: ast.expr) -> list[str] | None:
    """Member names the expression can evaluate to, or None if it is not ``ErrorCode.X``."""
    if isinstance(node, ast.IfExp):
        body, orelse = _error_code_names(node.body), _error_code_names(node.orelse)
        return None if body is None or orelse is None else body + orelse
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute | ast.Name)
        and (node.value.attr if isinstance(node.value, ast.Attribute) else node.value.id)
        == "ErrorCode"
    ):
        return [node.attr]
    return None


def _error_sends() -> list[tuple[str, ast.expr]]:
    sends = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in _ERROR_SENDERS:
                continue
            argument = _code_argument(node, _ERROR_SENDERS[name])
            if argument is not None:
                sends.append((f"{path.relative_to(ROOT)}:{node.lineno}", argument))
    return sends


def test_every_error_send_uses_a_listed_error_code() -> None:
    sends = _error_sends()
    assert len(sends) >= 25, "the scan found too few error sends; did the senders change name?"
    for where, argument in sends:
        if isinstance(argument, ast.Name) and argument.id == "code":
            continue  # a helper passing its own (typed) parameter on
        names = _error_code_names(argument)
        assert names is not None, f"{where}: error code {ast.unparse(argument)} is not ErrorCode.X"
        for name in names:
            assert name in ErrorCode.__members__, f"{where}: ErrorCode.{name} does not exist"


def test_every_error_code_is_documented_in_one_line() -> None:
    for code in ErrorCode:
        assert code.meaning.strip(), f"{code.name} has no meaning"
        assert "\n" not in code.meaning and len(code.meaning) <= 100, code.name
        assert re.fullmatch(r"[a-z_]+", code.value), code.value


def test_the_codes_the_browser_switches_on_are_listed() -> None:
    browser = {"session_ended", "already_connected", "unauthorized", "expired", "internal"}
    assert browser <= {code.value for code in ErrorCode}


def test_an_unlisted_error_code_cannot_be_sent() -> None:
    with pytest.raises(ValidationError):
        ErrorMessage(code="made_up", message="nope")  # type: ignore[arg-type]
    sent = ErrorMessage(code=ErrorCode.INTERNAL, message="x").model_dump_json()
    assert '"code":"internal"' in sent


def test_role_is_defined_once_and_keeps_its_wire_values() -> None:
    assert [str(role) for role in ROLES] == ["therapist", "client"]
    assert Role("client") is Role.CLIENT
    welcome = Welcome(role=Role.THERAPIST).model_dump_json()
    assert '"role":"therapist"' in welcome
    assert PeerState(role=Role.CLIENT, present=True).model_dump()["role"] == "client"
    redeclared = re.compile(
        r"class Role\b|Role = Literal|Literal\[\"therapist\", \"client\"\]|"
        r"ROLES = \(\"therapist\"|MediaState = Literal"
    )
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in _sources()
        if path != ROOT / "media" / "participants.py"
        for match in redeclared.finditer(path.read_text())
    ]
    assert not offenders, offenders


# --- alliance snapshots on the wire and in stored rows ----------------------------------------

FIXTURE = ROOT / "tests" / "fixtures" / "snapshot_dicts_v1.json"


def test_snapshots_written_by_the_old_to_dict_round_trip_identically() -> None:
    """The fixture is ``Snapshot.to_dict()`` output captured before the serialiser moved to
    pydantic: stored session rows look like this, and the panel reads these keys."""
    samples = json.loads(FIXTURE.read_text())
    assert len(samples) == 8
    for name, old in samples.items():
        snapshot = snapshot_from_json(old)
        assert isinstance(snapshot, Snapshot), name
        new = snapshot_json(snapshot)
        assert json.dumps(new) == json.dumps(old), name  # same keys, order and values
        # The signalling message carries exactly what the old dict field produced.
        message = Signals(snapshot=SnapshotPayload.of(snapshot)).model_dump_json()
        assert message == '{"type":"signals","snapshot":' + to_json(old).decode() + "}", name


def test_snapshot_payload_mirrors_the_engine_dataclasses() -> None:
    """A field added to the engine without its wire form would be silently dropped."""
    pairs: list[tuple[type[DataclassInstance], type[BaseModel]]] = [
        (Snapshot, SnapshotPayload),
        (WindowTotals, WindowPayload),
    ]
    for dataclass_type, payload in pairs:
        assert [f.name for f in fields(dataclass_type)] == list(payload.model_fields), payload


def test_joined_ice_servers_omit_absent_fields() -> None:
    """A STUN entry has no username: sending ``"username": null`` would make it "null"."""
    joined = Joined.model_validate(
        {
            "ice_servers": [
                {"urls": "stun:stun.example.org"},
                {"urls": ["turn:t.example.org"], "username": "u", "credential": "p"},
            ],
        }
    )
    sent = json.loads(joined.model_dump_json())
    assert sent["ice_servers"] == [
        {"urls": "stun:stun.example.org"},
        {"urls": ["turn:t.example.org"], "username": "u", "credential": "p"},
    ]


def test_quality_incident_keeps_its_wire_name_from() -> None:
    """The admin page reads ``from``/``to``; ``from`` is a Python keyword, so it is aliased."""
    from server.quality_hub import Incident

    incident = Incident(
        at=1.0, session_id="s", role="client", from_label="good", to="poor", score=40.0
    )
    assert json.loads(incident.model_dump_json(by_alias=True)) == {
        "at": 1.0,
        "session_id": "s",
        "role": "client",
        "from": "good",
        "to": "poor",
        "score": 40.0,
        "kind": "quality",
        "detail": "",
    }

"""A crafted multi-charge-point capture with known attacks and known legal look-alikes.

Every charge point runs a 1.6 session; some add a twist. ``EXPECTED`` says which alert each
twist must raise (None: a near miss that must stay silent). Used by the Kafka pipeline tests,
where many charge points spread over partitions matter.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.pcapgen import PcapWriter, ocpp_session

TWISTS = ("benign", "replay_different", "resend_after_result", "retry_after_error", "wrong_direction",
          "retry_unanswered")
EXPECTED = {"benign": None, "replay_different": "CW-REPLAY-001", "resend_after_result": "CW-REPLAY-002",
            "retry_after_error": None, "wrong_direction": "CW-PROTO-001", "retry_unanswered": None}
T0 = 1_795_000_000.0


def cp_name(i: int) -> str:
    return f"FLEET-{i:03d}"


def twist_of(i: int) -> str:
    return TWISTS[i % len(TWISTS)]


def _call(mid: str, action: str, payload: dict[str, object]) -> tuple[bool, str]:
    return True, json.dumps([2, mid, action, payload])


def _result(mid: str, payload: dict[str, object]) -> tuple[bool, str]:
    return False, json.dumps([3, mid, payload])


def session_messages(i: int) -> list[tuple[bool, str]]:
    """The frames of charge point i (CP side True), its twist included."""
    p = f"{i:03d}"
    tag = f"TAG{i:04d}"
    msgs = [
        _call(f"{p}-boot", "BootNotification", {"chargePointVendor": "Fleet", "chargePointModel": "F1"}),
        _result(f"{p}-boot", {"status": "Accepted", "currentTime": "2026-11-20T10:00:00Z", "interval": 300}),
        _call(f"{p}-auth", "Authorize", {"idTag": tag}),
        _result(f"{p}-auth", {"idTagInfo": {"status": "Accepted"}}),
        _call(f"{p}-hb", "Heartbeat", {}),
        _result(f"{p}-hb", {"currentTime": "2026-11-20T10:00:01Z"}),
    ]
    msgs += _twist(twist_of(i), p, tag)
    msgs += [
        _call(f"{p}-start", "StartTransaction",
              {"connectorId": 1, "idTag": tag, "meterStart": 1000, "timestamp": "2026-11-20T10:00:02Z"}),
        _result(f"{p}-start", {"transactionId": 5000 + i, "idTagInfo": {"status": "Accepted"}}),
        _call(f"{p}-stop", "StopTransaction",
              {"transactionId": 5000 + i, "meterStop": 1500, "timestamp": "2026-11-20T10:10:00Z"}),
        _result(f"{p}-stop", {}),
    ]
    return msgs


def _twist(twist: str, p: str, tag: str) -> list[tuple[bool, str]]:
    if twist == "replay_different":
        return [_call(f"{p}-auth", "Authorize", {"idTag": "EVIL" + tag}),
                _result(f"{p}-auth", {"idTagInfo": {"status": "Invalid"}})]
    if twist == "resend_after_result":
        return [_call(f"{p}-hb", "Heartbeat", {}), _result(f"{p}-hb", {"currentTime": "2026-11-20T10:00:01Z"})]
    if twist == "retry_after_error":
        meter = {"connectorId": 1, "meterValue": [{"timestamp": "2026-11-20T10:00:01Z",
                                                   "sampledValue": [{"value": "1200"}]}]}
        return [_call(f"{p}-meter", "MeterValues", meter),
                (False, json.dumps([4, f"{p}-meter", "InternalError", "busy", {}])),
                _call(f"{p}-meter", "MeterValues", meter),
                _result(f"{p}-meter", {})]
    if twist == "wrong_direction":
        return [_call(f"{p}-reset", "Reset", {"type": "Hard"}),
                (False, json.dumps([4, f"{p}-reset", "NotImplemented", "not supported", {}]))]
    if twist == "retry_unanswered":
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        return [_call(f"{p}-status", "StatusNotification", status), _call(f"{p}-status", "StatusNotification", status),
                _result(f"{p}-status", {})]
    return []


def write_fleet(path: Path, count: int = 24, deflate: bool = True) -> dict[str, str | None]:
    """Write the fleet capture; returns charge point -> expected rule id (None = no alert)."""
    with PcapWriter(str(path)) as writer:
        for i in range(count):
            ocpp_session(writer, session_messages(i), client=("10.0.0.2", 40000 + i), server=("10.0.0.1", 9000),
                         t0=T0 + i * 5.0, path=f"/ocpp/{cp_name(i)}", deflate=deflate, seed=i)
    return {cp_name(i): EXPECTED[twist_of(i)] for i in range(count)}

"""OCPP-J RPC anomalies judged one message at a time: malformed framing, unknown actions,
schema-invalid requests, and a second CALL while the sender's previous one is unanswered.

The collector records framing facts as flags (``message_id_too_long``, …); this detector
judges them. Schema checks use :mod:`detectors.schemas` (compiled once per (version, action),
tolerant of the values the collector replaced).
"""

from __future__ import annotations

import json
from typing import Any

from fastjsonschema import JsonSchemaValueException

from chargewatch.catalog import Catalog
from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Detector, Finding, State
from detectors.context import ChargePointContext
from detectors.protocol_session import SessionDetector
from detectors.rules import Rule
from detectors.schemas import first_violation, lenient_validator
from detectors.security_events import SecurityEventDetector

SCHEMA_INVALID = "CW-PROTO-002"
UNKNOWN_ACTION = "CW-PROTO-003"
CONCURRENT_CALL = "CW-PROTO-004"
MALFORMED_FRAMING = "CW-PROTO-006"

FRAMING_FLAGS = frozenset({"message_id_too_long", "message_id_not_string", "message_type_not_in_version"})
MAX_EVIDENCE_VALUE = 200
MAX_TRACKED_CONNECTIONS = 32  # (connection, direction) slots of the outstanding-CALL check
ANSWERS = (MessageType.CALLRESULT, MessageType.CALLERROR)


def protocol_detectors(rules: dict[str, Rule], catalog: Catalog) -> list[Detector]:
    """The detectors of the protocol-anomaly (CW-PROTO-002…008) and security-event (CW-SEC-*) rules."""
    return [ProtocolDetector(rules, catalog), SessionDetector(rules), SecurityEventDetector(rules)]


class ProtocolDetector:
    """CW-PROTO-002, -003, -004 and -006."""

    name: str = "protocol"
    rule_ids: tuple[str, ...] = (SCHEMA_INVALID, UNKNOWN_ACTION, CONCURRENT_CALL, MALFORMED_FRAMING)

    def __init__(self, rules: dict[str, Rule], catalog: Catalog) -> None:
        self.catalog = catalog
        self.check_schema = rules[SCHEMA_INVALID].enabled
        self.check_formats = bool(rules[SCHEMA_INVALID].param("check_date_time_format"))
        self.call_timeout = float(rules[CONCURRENT_CALL].param("call_timeout_s"))

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        if event.kind == "closed":
            outstanding: dict[tuple[str, Direction], list[Any]] | None = state.get("outstanding")
            if outstanding:
                outstanding.pop((event.connection_id, Direction.CP_TO_CSMS), None)
                outstanding.pop((event.connection_id, Direction.CSMS_TO_CP), None)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        findings = self._framing(msg, ctx) if msg.flags else []
        mtype = msg.message_type
        if mtype in (MessageType.CALL, MessageType.SEND):
            findings += self._request(msg)
            if mtype == MessageType.CALL:
                findings += self._outstanding(msg, state)
        elif mtype in ANSWERS:
            _answered(msg, state)
        return findings

    # --- CW-PROTO-006 -----------------------------------------------------------------

    def _framing(self, msg: OcppMessage, ctx: ChargePointContext) -> list[Finding]:
        """Message ids that are not strings of ≤36 characters; types 5/6 outside OCPP 2.1."""
        flags = sorted(FRAMING_FLAGS.intersection(msg.flags))
        if not flags:
            return []
        if msg.message_type in ANSWERS and ctx.request_for(msg) is not None:
            return []  # an answer echoing its CALL's bad id: the CALL was already reported
        return [Finding(MALFORMED_FRAMING,
                        f"{msg.sender} sent a malformed OCPP-J frame ({', '.join(flags)}) on OCPP "
                        f"{msg.ocpp_version}",
                        {"flags": flags, "sender": msg.sender, "message_type": msg.message_type,
                         "message_id_length": len(msg.message_id)})]

    def _send_misuse(self, msg: OcppMessage, version: str, action: str) -> list[Finding]:
        """2.1: SEND carries only unconfirmed (send-only) actions, and those never travel as CALL."""
        info = self.catalog.get(version, action)
        if info is None or info.send_only == (msg.message_type == MessageType.SEND):
            return []
        flag = "call_for_send_only_action" if info.send_only else "send_for_confirmed_action"
        return [Finding(MALFORMED_FRAMING,
                        f"{msg.sender} sent {msg.action} as {'CALL' if info.send_only else 'SEND'}, but OCPP "
                        f"{msg.ocpp_version} defines it as {'SEND' if info.send_only else 'CALL'} only",
                        {"flags": [flag], "sender": msg.sender, "message_type": msg.message_type,
                         "message_id_length": len(msg.message_id)})]

    # --- CW-PROTO-003 and CW-PROTO-002 ------------------------------------------------

    def _request(self, msg: OcppMessage) -> list[Finding]:
        version, action = msg.ocpp_version, msg.action
        if action is None or version not in self.catalog.actions or "message_type_not_in_version" in msg.flags:
            return []  # no version to judge against, or already malformed framing
        if self.catalog.get(version, action) is None:
            return [self._unknown(msg, version, action)]
        findings = self._send_misuse(msg, version, action) if version == "2.1" else []
        if self.check_schema:
            check = lenient_validator(version, action, False, self.check_formats)
            error = first_violation(check, msg.payload) if check is not None else None
            if error is not None:
                findings.append(_schema_finding(msg, error))
        return findings

    def _unknown(self, msg: OcppMessage, version: str, action: str) -> Finding:
        """An action the negotiated version does not define (CW-PROTO-001 judges known ones)."""
        elsewhere = [v for v in self.catalog.versions() if self.catalog.get(v, action) is not None]
        hint = f" (an OCPP {' / '.join(elsewhere)} action)" if elsewhere else ""
        return Finding(UNKNOWN_ACTION, f"{msg.sender} sent {action!r}, which OCPP {version} does not define{hint}",
                       {"sender": msg.sender, "unknown_action": action, "defined_in": elsewhere,
                        "flagged_by_collector": "unknown_action" in msg.flags})

    # --- CW-PROTO-004 -----------------------------------------------------------------

    def _outstanding(self, msg: OcppMessage, state: State) -> list[Finding]:
        """A CALL while the sender's previous CALL on this connection is unanswered and not timed out."""
        outstanding: dict[tuple[str, Direction], list[Any]] = state.setdefault("outstanding", {})
        key = (msg.connection_id, msg.direction)
        previous = outstanding.pop(key, None)
        outstanding[key] = [msg.message_id, msg.ts, msg.action]
        if len(outstanding) > MAX_TRACKED_CONNECTIONS:
            del outstanding[next(iter(outstanding))]
        if previous is None or previous[0] == msg.message_id:
            return []  # nothing outstanding, or a retry of the outstanding CALL itself
        age = msg.ts - previous[1]
        if not 0 <= age < self.call_timeout:
            return []  # timed out (or records out of order): the sender may move on
        return [Finding(CONCURRENT_CALL,
                        f"{msg.sender} sent {msg.action} while its {previous[2]} {previous[0]} on this "
                        f"connection was unanswered for {age:.1f}s (timeout {self.call_timeout:g}s)",
                        {"sender": msg.sender, "outstanding_message_id": previous[0],
                         "outstanding_action": previous[2], "outstanding_ts": previous[1],
                         "outstanding_age_s": round(age, 6), "call_timeout_s": self.call_timeout})]


def _answered(msg: OcppMessage, state: State) -> None:
    outstanding: dict[tuple[str, Direction], list[Any]] | None = state.get("outstanding")
    if not outstanding:
        return
    caller = Direction.CSMS_TO_CP if msg.direction is Direction.CP_TO_CSMS else Direction.CP_TO_CSMS
    key = (msg.connection_id, caller)
    entry = outstanding.get(key)
    if entry is not None and entry[0] == msg.message_id:
        del outstanding[key]


# --- schema validation ------------------------------------------------------------------


def _schema_finding(msg: OcppMessage, error: JsonSchemaValueException) -> Finding:
    field = (error.name or "data").removeprefix("data").lstrip(".") or "(payload)"
    return Finding(SCHEMA_INVALID,
                   f"{msg.sender} sent a {msg.action} request that violates the OCPP {msg.ocpp_version} "
                   f"schema: {error.message}",
                   {"sender": msg.sender, "violation": error.message, "field": field, "schema_rule": error.rule,
                    "expected": _short(error.rule_definition), "value": _short(error.value)})


def _short(value: Any) -> Any:
    """value as is when a short scalar, else a truncated JSON rendering (evidence stays small)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_EVIDENCE_VALUE else text[:MAX_EVIDENCE_VALUE] + "…"

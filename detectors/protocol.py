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

from chargewatch.catalog import ActionInfo, Catalog
from chargewatch.model import ConnectionEvent, Direction, MessageType, OcppMessage
from detectors.base import Detector, Finding, State
from detectors.context import ChargePointContext
from detectors.protocol_session import SessionDetector
from detectors.rules import Rule
from detectors.schemas import Acceptor, Validator, acceptor, first_violation, lenient_validator, stable_message
from detectors.security_events import SecurityEventDetector

SCHEMA_INVALID = "CW-PROTO-002"
UNKNOWN_ACTION = "CW-PROTO-003"
CONCURRENT_CALL = "CW-PROTO-004"
MALFORMED_FRAMING = "CW-PROTO-006"

FRAMING_FLAGS = frozenset({"message_id_too_long", "message_id_not_string", "message_type_not_in_version"})
MAX_EVIDENCE_VALUE = 200
MAX_TRACKED_CONNECTIONS = 32  # (connection, direction) slots of the outstanding-CALL check
# Plain ints and members bound once: this detector sees every message.
CALL, SEND = int(MessageType.CALL), int(MessageType.SEND)
REQUESTS = frozenset({CALL, SEND})
ANSWERS = frozenset({int(MessageType.CALLRESULT), int(MessageType.CALLERROR)})
CP_TO_CSMS, CSMS_TO_CP = Direction.CP_TO_CSMS, Direction.CSMS_TO_CP
OUTSTANDING = "outstanding"  # state: (connection id, direction) -> the sender's unanswered CALL


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
        self._plans: dict[str, dict[str, _Plan]] = {}  # version -> action -> plan, filled on first use

    def on_connection(self, event: ConnectionEvent, ctx: ChargePointContext, state: State) -> list[Finding]:
        if event.kind == "closed":
            outstanding: dict[tuple[str, Direction], OcppMessage] | None = state.get(OUTSTANDING)
            if outstanding:
                outstanding.pop((event.connection_id, CP_TO_CSMS), None)
                outstanding.pop((event.connection_id, CSMS_TO_CP), None)
        return []

    def on_message(self, msg: OcppMessage, ctx: ChargePointContext, state: State) -> list[Finding]:
        findings = self._framing(msg, ctx) if msg.flags else []
        mtype = msg.message_type
        if mtype in REQUESTS:
            request = self._request(msg)
            if request:
                findings += request
            if mtype == CALL:
                outstanding = self._outstanding(msg, state)
                if outstanding is not None:
                    findings.append(outstanding)
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

    def _send_misuse(self, msg: OcppMessage, info: ActionInfo) -> list[Finding]:
        """2.1: SEND carries only unconfirmed (send-only) actions, and those never travel as CALL."""
        if info.send_only == (msg.message_type == SEND):
            return []
        flag = "call_for_send_only_action" if info.send_only else "send_for_confirmed_action"
        return [Finding(MALFORMED_FRAMING,
                        f"{msg.sender} sent {msg.action} as {'CALL' if info.send_only else 'SEND'}, but OCPP "
                        f"{msg.ocpp_version} defines it as {'SEND' if info.send_only else 'CALL'} only",
                        {"flags": [flag], "sender": msg.sender, "message_type": msg.message_type,
                         "message_id_length": len(msg.message_id)})]

    # --- CW-PROTO-003 and CW-PROTO-002 ------------------------------------------------

    def _request(self, msg: OcppMessage) -> list[Finding] | None:
        """Findings about a CALL/SEND's action and payload (None: nothing to report)."""
        version, action = msg.ocpp_version, msg.action
        if action is None or version is None or (msg.flags and "message_type_not_in_version" in msg.flags):
            return None  # no version to judge against, or already malformed framing
        plans = self._plans.get(version)
        plan = plans.get(action) if plans is not None else None
        if plan is None:
            if version not in self.catalog.actions:
                return None  # no version to judge against
            info = self.catalog.get(version, action)
            if info is None:
                return [self._unknown(msg, version, action)]
            plan = self._plan(version, info)  # cached: one per action of the catalog
            self._plans.setdefault(version, {})[action] = plan
        findings = self._send_misuse(msg, plan.info) if version == "2.1" else []
        # The acceptor answers "valid" for most payloads at a fraction of first_violation's cost.
        if plan.check is not None and not plan.accept(msg.payload):
            error = first_violation(plan.check, msg.payload)
            if error is not None:
                findings.append(_schema_finding(msg, error))
        return findings

    def _plan(self, version: str, info: ActionInfo) -> _Plan:
        """What a request of a known (version, action) is judged with."""
        if not self.check_schema:
            return _Plan(info, None, None)
        return _Plan(info, acceptor(version, info.action, False, self.check_formats),
                     lenient_validator(version, info.action, False, self.check_formats))

    def _unknown(self, msg: OcppMessage, version: str, action: str) -> Finding:
        """An action the negotiated version does not define (CW-PROTO-001 judges known ones)."""
        elsewhere = [v for v in self.catalog.versions() if self.catalog.get(v, action) is not None]
        hint = f" (an OCPP {' / '.join(elsewhere)} action)" if elsewhere else ""
        return Finding(UNKNOWN_ACTION, f"{msg.sender} sent {action!r}, which OCPP {version} does not define{hint}",
                       {"sender": msg.sender, "unknown_action": action, "defined_in": elsewhere,
                        "flagged_by_collector": "unknown_action" in msg.flags})

    # --- CW-PROTO-004 -----------------------------------------------------------------

    def _outstanding(self, msg: OcppMessage, state: State) -> Finding | None:
        """A CALL while the sender's previous CALL on this connection is unanswered and not timed out."""
        outstanding: dict[tuple[str, Direction], OcppMessage] | None = state.get(OUTSTANDING)
        if outstanding is None:
            outstanding = state[OUTSTANDING] = {}
        key = (msg.connection_id, msg.direction)
        previous = outstanding.pop(key, None)
        outstanding[key] = msg
        if len(outstanding) > MAX_TRACKED_CONNECTIONS:
            del outstanding[next(iter(outstanding))]
        if previous is None or previous.message_id == msg.message_id:
            return None  # nothing outstanding, or a retry of the outstanding CALL itself
        age = msg.ts - previous.ts
        if not 0 <= age < self.call_timeout:
            return None  # timed out (or records out of order): the sender may move on
        return Finding(CONCURRENT_CALL,
                       f"{msg.sender} sent {msg.action} while its {previous.action} {previous.message_id} on "
                       f"this connection was unanswered for {age:.1f}s (timeout {self.call_timeout:g}s)",
                       {"sender": msg.sender, "outstanding_message_id": previous.message_id,
                        "outstanding_action": previous.action, "outstanding_ts": previous.ts,
                        "outstanding_age_s": round(age, 6), "call_timeout_s": self.call_timeout})


class _Plan:
    """How requests of one known (version, action) are judged: check None when schemas are not
    checked or the action has no request schema."""

    __slots__ = ("accept", "check", "info")

    def __init__(self, info: ActionInfo, accept: Acceptor | None, check: Validator | None) -> None:
        self.info = info
        self.check = check
        self.accept: Acceptor = accept if accept is not None and check is not None else _never


def _never(payload: Any) -> bool:
    return False


def _answered(msg: OcppMessage, state: State) -> None:
    outstanding: dict[tuple[str, Direction], OcppMessage] | None = state.get(OUTSTANDING)
    if not outstanding:
        return
    key = (msg.connection_id, CSMS_TO_CP if msg.direction is CP_TO_CSMS else CP_TO_CSMS)
    entry = outstanding.get(key)
    if entry is not None and entry.message_id == msg.message_id:
        del outstanding[key]


# --- schema validation ------------------------------------------------------------------


def _schema_finding(msg: OcppMessage, error: JsonSchemaValueException) -> Finding:
    field = (error.name or "data").removeprefix("data").lstrip(".") or "(payload)"
    violation = stable_message(error)
    return Finding(SCHEMA_INVALID,
                   f"{msg.sender} sent a {msg.action} request that violates the OCPP {msg.ocpp_version} "
                   f"schema: {violation}",
                   {"sender": msg.sender, "violation": violation, "field": field, "schema_rule": error.rule,
                    "expected": _short(error.rule_definition), "value": _short(error.value)})


def _short(value: Any) -> Any:
    """value as is when a short scalar, else a truncated JSON rendering (evidence stays small)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_EVIDENCE_VALUE else text[:MAX_EVIDENCE_VALUE] + "…"

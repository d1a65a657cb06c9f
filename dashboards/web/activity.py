"""What the archive of OCPP messages says, in the rows the views show: remote commands with
their outcome, charging sessions, and a charge point's timeline.

Every function takes archived record documents (``MESSAGE_FIELDS`` shape, oldest first, as
:meth:`chargewatch.store.Store.messages` returns them) and, where it helps, alert documents; it
pairs each central-system CALL with the charge point's answer (same charge point and message
id) to read the outcome: the answer's ``ocpp.status``, or its CALLERROR code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chargewatch.catalog import Catalog
from chargewatch.store.documents import get_field
from dashboards.web.summaries import epoch, severity_of

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR = 2, 3, 4, 5
CSMS_TO_CP, CP_TO_CSMS = "csms->cp", "cp->csms"
ACCEPTED = frozenset({"Accepted", "Unlocked", "Scheduled", "RebootRequired", "Ongoing"})
DETAIL_CHARS = 240


@dataclass
class Command:
    """One central-system CALL to a charge point and what became of it."""

    ts: str
    charge_point_id: str
    action: str
    message_id: str
    version: str
    sensitivity: str  # the action catalog's tag: what the command can do
    sender: str  # the central system's address:port as captured
    outcome: str = "no answer in the archive"
    outcome_class: str = "none"  # accepted, refused, error, none
    answered_at: str = ""
    alerts: list[tuple[str, str, int]] = field(default_factory=list)  # alert id, rule id, severity


@dataclass
class Session:
    """One charging session (transaction) as the archive shows it."""

    charge_point_id: str
    transaction_id: str
    start: str
    end: str
    connector: int | None = None
    id_token: str = ""
    messages: int = 0
    meter_start: float | None = None
    meter_stop: float | None = None
    stop_reason: str = ""
    ended: bool = False

    @property
    def energy_wh(self) -> float | None:
        if self.meter_start is None or self.meter_stop is None:
            return None
        return self.meter_stop - self.meter_start

    @property
    def duration_s(self) -> float | None:
        first, last = epoch(self.start), epoch(self.end)
        return None if first is None or last is None else last - first


@dataclass(frozen=True)
class TimelineRow:
    """One line of a timeline: a message, a connection event or an alert."""

    ts: str
    kind: str  # message, connection, alert
    direction: str
    what: str  # action / event kind / rule id
    message_id: str
    detail: str
    marked: bool = False  # the message that triggered the alert the timeline is centred on
    alert_id: str = ""
    severity: int = 0
    css: str = ""


def commands(messages: Sequence[dict[str, Any]], alerts: Sequence[dict[str, Any]], catalog: Catalog,
             sensitive: frozenset[str] | None) -> list[Command]:
    """Central-system CALLs, newest first, with outcome and alerts: those whose action is in
    sensitive, or all of them (None)."""
    by_trigger: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    for alert in alerts:
        key = (str(get_field(alert, "ocpp.charge_point_id")), str(get_field(alert, "ocpp.message_id")))
        by_trigger.setdefault(key, []).append((str(get_field(alert, "event.id")), str(get_field(alert, "rule.id")),
                                               severity_of(alert)))
    pending: dict[tuple[str, str], Command] = {}
    rows: list[Command] = []
    for doc in messages:
        cp, mid = str(get_field(doc, "ocpp.charge_point_id") or ""), str(get_field(doc, "ocpp.message_id") or "")
        kind, direction = get_field(doc, "ocpp.message_type"), get_field(doc, "ocpp.direction")
        if kind == CALL and direction == CSMS_TO_CP:
            if sensitive is not None and get_field(doc, "ocpp.action") not in sensitive:
                continue
            command = _command(doc, cp, mid, catalog)
            command.alerts = by_trigger.get((cp, mid), [])
            rows.append(command)
            pending[(cp, mid)] = command
        elif kind in (CALLRESULT, CALLERROR, CALLRESULTERROR) and direction == CP_TO_CSMS:
            answered = pending.pop((cp, mid), None)
            if answered is not None:
                _answer(answered, doc, kind)
    rows.reverse()
    return rows


def _command(doc: dict[str, Any], cp: str, mid: str, catalog: Catalog) -> Command:
    action, version = str(get_field(doc, "ocpp.action") or ""), str(get_field(doc, "ocpp.version") or "")
    ip, port = get_field(doc, "source.ip"), get_field(doc, "source.port")
    sender = f"{ip}:{port}" if ip and port else str(ip or "")
    return Command(ts=str(doc.get("@timestamp", "")), charge_point_id=cp, action=action, message_id=mid,
                   version=version, sensitivity=sensitivity(catalog, version, action), sender=sender)


def _answer(command: Command, doc: dict[str, Any], kind: Any) -> None:
    command.answered_at = str(doc.get("@timestamp", ""))
    if kind == CALLRESULT:
        status = get_field(doc, "ocpp.status")
        command.outcome = str(status) if status else "answered (no status)"
        command.outcome_class = "accepted" if status in ACCEPTED or not status else "refused"
    else:
        command.outcome = f"CALLERROR {get_field(doc, 'ocpp.error_code') or ''}".strip()
        command.outcome_class = "error"


def sensitivity(catalog: Catalog, version: str, action: str) -> str:
    """The catalog's sensitivity tag of action in version (any version when this one lacks it)."""
    info = catalog.get(version, action)
    if info is None:
        info = next((found for v in catalog.versions() if (found := catalog.get(v, action)) is not None), None)
    return info.sensitivity if info is not None else ""


def sessions(messages: Sequence[dict[str, Any]]) -> list[Session]:
    """Charging sessions named in the archive (1.6 Start/StopTransaction, 2.x TransactionEvent,
    and every message carrying their transaction id), newest first."""
    starts: dict[tuple[str, str], dict[str, Any]] = {}  # (cp, message id) -> StartTransaction CALL
    found: dict[tuple[str, str], Session] = {}
    for doc in messages:
        cp, mid = str(get_field(doc, "ocpp.charge_point_id") or ""), str(get_field(doc, "ocpp.message_id") or "")
        action, kind = get_field(doc, "ocpp.action"), get_field(doc, "ocpp.message_type")
        if action == "StartTransaction" and kind == CALL:
            starts[(cp, mid)] = doc
        tid = get_field(doc, "ocpp.transaction_id")
        if tid is None:
            continue
        ts = str(doc.get("@timestamp", ""))
        session = found.get((cp, str(tid)))
        if session is None:
            session = found[(cp, str(tid))] = Session(cp, str(tid), ts, ts)
            start_call = starts.pop((cp, mid), None) if action == "StartTransaction" else None
            if start_call is not None:
                _started(session, start_call)
        session.end = max(session.end, ts)
        session.messages += 1
        _observe(session, doc, action, kind)
    return sorted(found.values(), key=lambda s: s.start, reverse=True)


def _started(session: Session, call: dict[str, Any]) -> None:
    payload = _payload(call)
    session.start = str(call.get("@timestamp", session.start))
    session.messages += 1
    session.connector = _int(get_field(call, "ocpp.connector_id"))
    session.id_token = str(get_field(call, "ocpp.id_token") or "")
    session.meter_start = _number(payload.get("meterStart"))


def _observe(session: Session, doc: dict[str, Any], action: Any, kind: Any) -> None:
    if session.connector is None:
        session.connector = _int(get_field(doc, "ocpp.connector_id"))
    if not session.id_token:
        session.id_token = str(get_field(doc, "ocpp.id_token") or "")
    if kind != CALL:
        return
    payload = _payload(doc)
    if action == "StopTransaction":
        session.ended = True
        session.meter_stop = _number(payload.get("meterStop"))
        session.stop_reason = str(payload.get("reason") or "")
    elif action == "TransactionEvent" and payload.get("eventType") == "Ended":
        session.ended = True
        info = payload.get("transactionInfo")
        session.stop_reason = str(info.get("stoppedReason") or "") if isinstance(info, dict) else ""


def timeline(messages: Sequence[dict[str, Any]], alerts: Sequence[dict[str, Any]],
             around: dict[str, Any] | None = None) -> list[TimelineRow]:
    """Messages, connection events and alerts of one charge point in time order; the message
    that triggered around (an alert) is marked."""
    marked = trigger_index(messages, around) if around is not None else None
    rows: list[TimelineRow] = []
    for index, doc in enumerate(messages):
        ts = str(doc.get("@timestamp", ""))
        if get_field(doc, "event.dataset") == "chargewatch.connection":
            rows.append(TimelineRow(ts, "connection", "", str(get_field(doc, "event.action")), "",
                                    _connection_detail(doc), css="row-connection"))
            continue
        outcome = get_field(doc, "ocpp.status") or get_field(doc, "ocpp.error_code") or ""
        name = get_field(doc, "ocpp.message_type_name") or get_field(doc, "ocpp.message_type")
        rows.append(TimelineRow(ts, "message", str(get_field(doc, "ocpp.direction") or ""),
                                f"{name} {get_field(doc, 'ocpp.action') or ''}".strip(),
                                str(get_field(doc, "ocpp.message_id") or ""),
                                (f"{outcome}  " if outcome else "") + _short(get_field(doc, "ocpp.payload")),
                                marked=index == marked, css="row-trigger" if index == marked else ""))
    for alert in alerts:
        level = severity_of(alert)
        rows.append(TimelineRow(str(alert.get("@timestamp", "")), "alert", "", str(get_field(alert, "rule.id")),
                                str(get_field(alert, "ocpp.message_id") or ""), str(alert.get("message", "")),
                                alert_id=str(get_field(alert, "event.id")), severity=level,
                                css=f"row-alert sev-row-{level}"))
    rows.sort(key=lambda row: (epoch(row.ts) or 0.0, row.kind == "alert"))
    return rows


def trigger_index(messages: Sequence[dict[str, Any]], alert: dict[str, Any]) -> int | None:
    """Index of the message that triggered alert: its message id, sent in its direction, the one
    closest to the alert's time (a replay reuses the id of an earlier message)."""
    mid, direction = get_field(alert, "ocpp.message_id"), get_field(alert, "ocpp.direction")
    moment = epoch(alert.get("@timestamp")) or 0.0
    best: tuple[float, int] | None = None
    for index, doc in enumerate(messages):
        if not mid or get_field(doc, "ocpp.message_id") != mid:
            continue
        if direction and get_field(doc, "ocpp.direction") != direction:
            continue
        distance = abs((epoch(doc.get("@timestamp")) or 0.0) - moment)
        if best is None or distance < best[0]:
            best = (distance, index)
    return None if best is None else best[1]


def _connection_detail(doc: dict[str, Any]) -> str:
    parts = [f"{name} {value}" for name, value in (
        ("from", get_field(doc, "source.ip")), ("subprotocol", get_field(doc, "ocpp.subprotocol")),
        ("auth", get_field(doc, "ocpp.auth_scheme")), ("HTTP", get_field(doc, "ocpp.http_status")),
        ("TLS", get_field(doc, "tls.version"))) if value not in (None, "")]
    return ", ".join(parts)


def _payload(doc: dict[str, Any]) -> dict[str, Any]:
    payload = get_field(doc, "ocpp.payload")
    return payload if isinstance(payload, dict) else {}


def _short(payload: Any) -> str:
    if payload is None:
        return ""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 1] + "…"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

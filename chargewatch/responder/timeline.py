"""The timeline of one charge point: its archived records and its alerts in time order.

Each CALL is paired with its answer (CALLRESULT, CALLERROR or CALLRESULTERROR from the other
side, same connection and message id; a re-used id pairs in order), with the answer latency.
The record that triggered an alert is marked with the alert's id: the record whose source
reference (``event.reference``, e.g. ``demo.pcap#94``) and message id are the alert's, else the
record of the alert's connection, direction and message id closest in time. Each alert is placed
right after the record that triggered it, or at its own time when that record is not in view.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chargewatch.store import AlertQuery, MessageQuery, Store
from chargewatch.store.documents import get_field

CALL, SEND = 2, 6
ALERTS_PER_TIMELINE = 10_000


@dataclass
class Entry:
    """One line of a timeline: a record (with the answer paired to it, for a CALL) or an alert."""

    ts: float
    kind: str  # "record" or "alert"
    doc: dict[str, Any]
    answer: dict[str, Any] | None = None
    latency_ms: float | None = None
    # Ids of the alerts this record (triggers) or its paired answer (answer_triggers) triggered.
    triggers: list[str] = field(default_factory=list)
    answer_triggers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--format json``."""
        out: dict[str, Any] = {"kind": self.kind, "time": get_field(self.doc, "@timestamp"), "document": self.doc}
        if self.answer is not None:
            out["answer"] = {"document": self.answer, "latency_ms": self.latency_ms,
                             "triggered_alerts": self.answer_triggers}
        if self.kind == "record":
            out["triggered_alerts"] = self.triggers
        return out


@dataclass
class Timeline:
    """What :func:`build_timeline` returns (since/until None: unbounded)."""

    charge_point_id: str
    since: float | None
    until: float | None
    entries: list[Entry]
    records: int
    truncated: bool  # the record limit was reached: later records are not shown


def epoch(text: str) -> float:
    """Epoch seconds of an RFC 3339 time from a document."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def build_timeline(store: Store, charge_point_id: str, since: float | None, until: float | None,
                   limit: int = 10_000, extra_alerts: tuple[dict[str, Any], ...] = ()) -> Timeline:
    """The timeline of charge_point_id between since and until (at most limit records);
    extra_alerts (e.g. the alert a ``--around`` names) are shown even when outside the window."""
    records = store.messages(MessageQuery(charge_point_id=charge_point_id, since=since, until=until, limit=limit))
    alerts = store.search(AlertQuery(since=since, until=until, charge_point_id=charge_point_id,
                                     limit=ALERTS_PER_TIMELINE))
    known = {get_field(a, "event.id") for a in alerts}
    alerts += [a for a in extra_alerts if get_field(a, "event.id") not in known]
    entries = pair_records(records)
    place_alerts(entries, alerts)
    return Timeline(charge_point_id, since, until, entries, len(records), len(records) >= limit)


def pair_records(records: list[dict[str, Any]]) -> list[Entry]:
    """Entries for records in time order, each answer folded into the entry of its CALL."""
    entries: list[Entry] = []
    pending: dict[tuple[Any, ...], list[Entry]] = defaultdict(list)
    for doc in records:
        ts = epoch(doc["@timestamp"])
        mtype = get_field(doc, "ocpp.message_type")
        key = (get_field(doc, "ocpp.connection_id"), get_field(doc, "ocpp.message_id"))
        sender = get_field(doc, "ocpp.sender")
        if mtype is not None and mtype not in (CALL, SEND):
            waiting = pending.get((*key, "csms" if sender == "cp" else "cp"))
            if waiting:
                call = waiting.pop(0)
                call.answer, call.latency_ms = doc, round((ts - call.ts) * 1000.0, 3)
                continue
        entry = Entry(ts, "record", doc)
        entries.append(entry)
        if mtype == CALL:
            pending[(*key, sender)].append(entry)
    return entries


def place_alerts(entries: list[Entry], alerts: list[dict[str, Any]]) -> None:
    """Mark each alert's trigger and insert the alert after it (or at its time), in place."""
    placed: list[tuple[float, int, Entry]] = [(e.ts, 2 * i, e) for i, e in enumerate(entries)]
    position = {id(e): 2 * i for i, e in enumerate(entries)}
    for alert in alerts:
        alert_id = str(get_field(alert, "event.id"))
        found = find_trigger(entries, alert)
        alert_entry = Entry(epoch(alert["@timestamp"]), "alert", alert)
        if found is None:
            placed.append((alert_entry.ts, len(placed) * 2 + 1, alert_entry))
            continue
        entry, in_answer = found
        (entry.answer_triggers if in_answer else entry.triggers).append(alert_id)
        placed.append((entry.ts, position[id(entry)] + 1, alert_entry))
    placed.sort(key=lambda item: (item[0], item[1]))
    entries[:] = [e for _, _, e in placed]


def find_trigger(entries: list[Entry], alert: dict[str, Any]) -> tuple[Entry, bool] | None:
    """The entry holding the record that triggered alert, and whether it is the entry's answer."""
    reference = get_field(alert, "event.reference")
    message_id = get_field(alert, "ocpp.message_id")
    connection = get_field(alert, "ocpp.connection_id")
    direction = get_field(alert, "ocpp.direction")
    alert_ts = epoch(alert["@timestamp"])
    best: tuple[float, Entry, bool] | None = None
    for entry in entries:
        for doc, in_answer in ((entry.doc, False), (entry.answer, True)):
            if doc is None or entry.kind != "record":
                continue
            if reference and get_field(doc, "event.reference") == reference and (
                    message_id is None or get_field(doc, "ocpp.message_id") == message_id):
                return entry, in_answer
            if (message_id is not None and get_field(doc, "ocpp.message_id") == message_id
                    and get_field(doc, "ocpp.connection_id") == connection
                    and get_field(doc, "ocpp.direction") == direction):
                distance = abs(epoch(doc["@timestamp"]) - alert_ts)
                if best is None or distance < best[0]:
                    best = (distance, entry, in_answer)
    return (best[1], best[2]) if best is not None else None

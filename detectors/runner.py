"""The detector runner: routes each record to every detector with its key's context and state.

State lives here, keyed by the stage's state key (the charge point for per-station
detectors): a :class:`ChargePointContext` the runner keeps up to date, one dict per detector,
and the open alert storms. It can be dropped for partitions a process no longer owns and is
rebuilt by replaying records with ``emit=False``.

Storms collapse: findings of one rule for one key within the rule's collapse window (aligned
to the epoch, so every process agrees) become one alert whose id is derived from the window;
each further finding re-emits that alert with a higher count and a later ``last_seen``, and
consumers update it in place.

Correlation stages (keys that are not charge points) receive the records of one key merged
from many charge points, in an order that depends on how upstream partitions were consumed.
Their runner is built with ``lateness_s`` > 0: a storm then keeps as its first and latest
occurrence the earliest and latest by message time (not arrival), and storms expire relative
to the newest record of the key, so the final alert is the same in any arrival order within
that lateness. It is also built with ``track_context=False``: a :class:`ChargePointContext`
named after the key is handed to detectors but never filled (it would mix charge points).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chargewatch.alerts import Alert, alert_id
from chargewatch.model import ConnectionEvent, KeyFn, OcppMessage, Record, record_key
from detectors.base import Detector, Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule

LOG = logging.getLogger(__name__)
Handler = tuple[str, Callable[[Any, ChargePointContext, State], list[Finding]]]


def _actions(detector: Detector) -> frozenset[str] | None:
    """The actions a detector wants (None: every message); see :class:`detectors.base.Detector`."""
    wanted: frozenset[str] | None = getattr(detector, "actions", None)
    return wanted


@dataclass
class Storm:
    """One rule firing repeatedly on one key within one window."""

    alert: Alert
    count: int = 1
    # Earliest and latest occurrence by message time (used when records may arrive late).
    first: Alert | None = None
    last: Alert | None = None


@dataclass
class KeyState:
    """Everything the runner keeps for one key."""

    context: ChargePointContext
    detectors: dict[str, State] = field(default_factory=dict)
    storms: dict[tuple[str, float], Storm] = field(default_factory=dict)
    newest_ts: float = 0.0  # latest message time of the key (storm expiry under lateness)


class DetectorRunner:
    """Runs the enabled detectors over records, producing alerts."""

    def __init__(self, detectors: Iterable[Detector], rules: dict[str, Rule], key: KeyFn = record_key,
                 track_context: bool = True, lateness_s: float = 0.0) -> None:
        self.rules = rules
        # A detector runs when one of its rules is enabled, or when it asks to (``always_run``:
        # CW-TX-006 hands on session features for a store or topic with its rule disabled).
        self.detectors = [d for d in detectors
                          if getattr(d, "always_run", False) or any(rules[r].enabled for r in d.rule_ids)]
        self.key = key
        self.track_context = track_context
        self.lateness_s = lateness_s
        self.states: dict[str, KeyState] = {}
        self.processed = 0
        self.failures: Counter[str] = Counter()  # exceptions raised by each detector (see _failed)
        # Bound handlers, looked up once and grouped by action (this loop runs for every record):
        # a detector that declares its actions is not called for any other.
        self._on_connection: list[Handler] = [(d.name, d.on_connection) for d in self.detectors]
        self._every: list[Handler] = [(d.name, d.on_message) for d in self.detectors if _actions(d) is None]
        listed = {a for d in self.detectors for a in _actions(d) or ()}
        self._by_action: dict[str, list[Handler]] = {
            a: [(d.name, d.on_message) for d in self.detectors if (wanted := _actions(d)) is None or a in wanted]
            for a in listed}

    def process(self, record: Record, emit: bool = True, key: str | None = None) -> list[Alert]:
        """Feed one record under its key (key given: a routed correlation key); returns its
        alerts (none when emit is False: state warm-up)."""
        self.processed += 1
        if key is None:
            key = self.key(record)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = KeyState(ChargePointContext(key), {d.name: {} for d in self.detectors})
        state.newest_ts = max(state.newest_ts, record.ts)
        findings: list[Finding] = []
        ctx, own = state.context, state.detectors
        if isinstance(record, OcppMessage):
            handlers: list[Handler] = self._by_action.get(record.action or "", self._every)
        else:
            handlers = self._on_connection
        for name, handle in handlers:
            try:
                found = handle(record, ctx, own[name])
            except Exception:  # see _failed: one hostile record must not stop the stage
                self._failed(name, record)
                continue
            if found:
                findings += found
        if self.track_context:
            try:
                ctx.apply(record)
            except Exception:  # as above
                self._failed("context", record)
        if not findings:
            return []
        alerts = [self._collapse(state, key, f.about or record, f)
                  for f in findings if self.rules[f.rule_id].enabled]
        return alerts if emit else []

    def _failed(self, name: str, record: Record) -> None:
        """A detector raised on a record: a bug, usually on input no test foresaw. The record
        still reaches every other detector, the failure is counted per detector
        (``failures``) and logged with its traceback the first time, and the stage goes on:
        stopping would blind the whole fleet's monitoring for one crafted message."""
        self.failures[name] += 1
        if self.failures[name] == 1:
            LOG.exception("detector %s failed on %s (counted in failures; further ones are not logged)",
                          name, record.source or type(record).__name__)

    def _collapse(self, state: KeyState, key: str, record: Record, finding: Finding) -> Alert:
        rule = self.rules[finding.rule_id]
        fresh = build_alert(rule, key, record, finding)
        if rule.collapse_s <= 0:
            return fresh
        window = record.ts - record.ts % rule.collapse_s
        storm = state.storms.get((rule.id, window))
        if storm is None:
            _expire_storms(state, state.newest_ts if self.lateness_s else record.ts,
                           rule.collapse_s + self.lateness_s / 2)
            first = fresh.with_storm(alert_id(rule.id, key, f"window|{window:.0f}"), 1, fresh.ts)
            state.storms[(rule.id, window)] = Storm(first, first=fresh, last=fresh)
            return first
        storm.count += 1
        if self.lateness_s:
            return _collapse_by_time(storm, fresh)
        storm.alert = storm.alert.with_storm(storm.alert.id, storm.count, fresh.ts, _latest(fresh))
        return storm.alert

    def drop(self, keys: Iterable[str]) -> None:
        """Forget the state of keys this process no longer owns."""
        for key in keys:
            self.states.pop(key, None)


def _latest(alert: Alert) -> dict[str, Any]:
    return {"message_id": alert.message_id, "ts": alert.ts, "reason": alert.reason, "evidence": alert.evidence}


def _order(alert: Alert) -> tuple[float, str, str, str]:
    """Message-time order of occurrences, with ties broken by content (never by arrival)."""
    return alert.ts, alert.charge_point_id, alert.message_id or "", alert.reason


def _collapse_by_time(storm: Storm, fresh: Alert) -> Alert:
    """Storm update that keeps the earliest and the latest occurrence by message time."""
    if storm.first is None or storm.last is None:
        raise ValueError("storm without occurrences")
    if _order(fresh) < _order(storm.first):
        storm.first = fresh
    if _order(fresh) > _order(storm.last):
        storm.last = fresh
    storm.alert = storm.first.with_storm(storm.alert.id, storm.count, storm.last.ts, _latest(storm.last))
    return storm.alert


def _expire_storms(state: KeyState, now: float, window: float) -> None:
    for storm_key in [k for k in state.storms if k[1] + 2 * window < now]:
        del state.storms[storm_key]


def build_alert(rule: Rule, key: str, record: Record, finding: Finding) -> Alert:
    """The alert for one finding on one record (id from the trigger, before collapsing)."""
    common: dict[str, Any] = {"rule_id": rule.id, "rule_name": rule.name, "category": rule.category,
                              "severity": rule.severity, "risk_score": rule.risk_score,
                              "techniques": rule.techniques, "reason": finding.reason,
                              "evidence": finding.evidence, "source_ref": record.source, "ts": record.ts,
                              "kind": rule.kind}
    if isinstance(record, OcppMessage):
        trigger = f"{record.direction.value}|{record.message_id}|{record.ts:.6f}"
        return Alert(id=alert_id(rule.id, key, trigger), charge_point_id=record.charge_point_id or key,
                     message_id=record.message_id, action=record.action, ocpp_version=record.ocpp_version,
                     direction=record.direction.value, connection_id=record.connection_id,
                     source_ip=record.src_ip, source_port=record.src_port, destination_ip=record.dst_ip,
                     destination_port=record.dst_port, **common)
    return _connection_alert(rule, key, record, common)


def _connection_alert(rule: Rule, key: str, event: ConnectionEvent, common: dict[str, Any]) -> Alert:
    trigger = f"{event.kind}|{event.connection_id}|{event.ts:.6f}"
    return Alert(id=alert_id(rule.id, key, trigger), charge_point_id=event.key, message_id=None, action=None,
                 ocpp_version=event.ocpp_version, direction=None, connection_id=event.connection_id,
                 source_ip=event.client_ip, source_port=event.client_port, destination_ip=event.server_ip,
                 destination_port=event.server_port, **common)

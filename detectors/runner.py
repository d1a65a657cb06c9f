"""The detector runner: routes each record to every detector with its key's context and state.

State lives here, keyed by the stage's state key (the charge point for per-station
detectors): a :class:`ChargePointContext` the runner keeps up to date, one dict per detector,
and the open alert storms. It can be dropped for partitions a process no longer owns and is
rebuilt by replaying records with ``emit=False``.

Storms collapse: findings of one rule for one key within the rule's collapse window (aligned
to the epoch, so every process agrees) become one alert whose id is derived from the window;
each further finding re-emits that alert with a higher count and a later ``last_seen``, and
consumers update it in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chargewatch.alerts import Alert, alert_id
from chargewatch.model import ConnectionEvent, KeyFn, OcppMessage, Record, record_key
from detectors.base import Detector, Finding, State
from detectors.context import ChargePointContext
from detectors.rules import Rule


@dataclass
class Storm:
    """One rule firing repeatedly on one key within one window."""

    alert: Alert
    count: int = 1


@dataclass
class KeyState:
    """Everything the runner keeps for one key."""

    context: ChargePointContext
    detectors: dict[str, State] = field(default_factory=dict)
    storms: dict[tuple[str, float], Storm] = field(default_factory=dict)


class DetectorRunner:
    """Runs the enabled detectors over records, producing alerts."""

    def __init__(self, detectors: Iterable[Detector], rules: dict[str, Rule], key: KeyFn = record_key) -> None:
        self.rules = rules
        self.detectors = [d for d in detectors if any(rules[r].enabled for r in d.rule_ids)]
        self.key = key
        self.states: dict[str, KeyState] = {}
        self.processed = 0

    def process(self, record: Record, emit: bool = True) -> list[Alert]:
        """Feed one record; returns its alerts (none when emit is False: state warm-up)."""
        self.processed += 1
        key = self.key(record)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = KeyState(ChargePointContext(key))
        findings: list[Finding] = []
        for det in self.detectors:
            own = state.detectors.setdefault(det.name, {})
            if isinstance(record, OcppMessage):
                findings += det.on_message(record, state.context, own)
            else:
                findings += det.on_connection(record, state.context, own)
        state.context.apply(record)
        alerts = [self._collapse(state, key, record, f) for f in findings if self.rules[f.rule_id].enabled]
        return alerts if emit else []

    def _collapse(self, state: KeyState, key: str, record: Record, finding: Finding) -> Alert:
        rule = self.rules[finding.rule_id]
        fresh = build_alert(rule, key, record, finding)
        if rule.collapse_s <= 0:
            return fresh
        window = record.ts - record.ts % rule.collapse_s
        storm = state.storms.get((rule.id, window))
        if storm is None:
            _expire_storms(state, record.ts, rule.collapse_s)
            first = fresh.with_storm(alert_id(rule.id, key, f"window|{window:.0f}"), 1, fresh.ts)
            state.storms[(rule.id, window)] = Storm(first)
            return first
        storm.count += 1
        latest = {"message_id": fresh.message_id, "ts": fresh.ts, "reason": fresh.reason, "evidence": fresh.evidence}
        storm.alert = storm.alert.with_storm(storm.alert.id, storm.count, fresh.ts, latest)
        return storm.alert

    def drop(self, keys: Iterable[str]) -> None:
        """Forget the state of keys this process no longer owns."""
        for key in keys:
            self.states.pop(key, None)


def _expire_storms(state: KeyState, now: float, window: float) -> None:
    for storm_key in [k for k in state.storms if k[1] + 2 * window < now]:
        del state.storms[storm_key]


def build_alert(rule: Rule, key: str, record: Record, finding: Finding) -> Alert:
    """The alert for one finding on one record (id from the trigger, before collapsing)."""
    common: dict[str, Any] = {"rule_id": rule.id, "rule_name": rule.name, "category": rule.category,
                              "severity": rule.severity, "risk_score": rule.risk_score,
                              "techniques": rule.techniques, "reason": finding.reason,
                              "evidence": finding.evidence, "source_ref": record.source, "ts": record.ts}
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

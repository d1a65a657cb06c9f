"""The detector runner: routes each record to every detector with that key's state.

State lives here, keyed by the stage's state key (the charge point for per-station
detectors) and then by detector name. It is JSON-compatible, so it can be snapshotted,
dropped for partitions a process no longer owns, and rebuilt by replaying records with
``emit=False``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chargewatch.alerts import Alert, alert_id
from chargewatch.model import ConnectionEvent, KeyFn, OcppMessage, Record, record_key
from detectors.base import Detector, Finding, State
from detectors.rules import Rule


class DetectorRunner:
    """Runs the enabled detectors over records, producing alerts."""

    def __init__(self, detectors: Iterable[Detector], rules: dict[str, Rule], key: KeyFn = record_key) -> None:
        self.rules = rules
        self.detectors = [d for d in detectors if any(rules[r].enabled for r in d.rule_ids)]
        self.key = key
        self.states: dict[str, dict[str, State]] = {}
        self.processed = 0

    def process(self, record: Record, emit: bool = True) -> list[Alert]:
        """Feed one record; returns its alerts (none when emit is False: state warm-up)."""
        self.processed += 1
        states = self.states.setdefault(self.key(record), {})
        alerts: list[Alert] = []
        for det in self.detectors:
            state = states.setdefault(det.name, {})
            if isinstance(record, OcppMessage):
                findings = det.on_message(record, state)
            else:
                findings = det.on_connection(record, state)
            if emit:
                alerts.extend(self._alert(record, f) for f in findings if self.rules[f.rule_id].enabled)
        return alerts

    def _alert(self, record: Record, finding: Finding) -> Alert:
        rule = self.rules[finding.rule_id]
        if isinstance(record, OcppMessage):
            trigger = f"{record.direction.value}|{record.message_id}|{record.ts:.6f}"
            return Alert(
                id=alert_id(rule.id, record.charge_point_id, trigger), ts=record.ts, rule_id=rule.id,
                rule_name=rule.name, category=rule.category, severity=rule.severity,
                risk_score=rule.risk_score, techniques=rule.techniques,
                charge_point_id=record.charge_point_id, message_id=record.message_id, action=record.action,
                ocpp_version=record.ocpp_version, direction=record.direction.value,
                connection_id=record.connection_id, source_ip=record.src_ip, source_port=record.src_port,
                destination_ip=record.dst_ip, destination_port=record.dst_port, reason=finding.reason,
                evidence=finding.evidence, source_ref=record.source)
        return self._connection_alert(record, rule, finding)

    def _connection_alert(self, event: ConnectionEvent, rule: Rule, finding: Finding) -> Alert:
        trigger = f"{event.kind}|{event.connection_id}|{event.ts:.6f}"
        return Alert(
            id=alert_id(rule.id, event.key, trigger), ts=event.ts, rule_id=rule.id, rule_name=rule.name,
            category=rule.category, severity=rule.severity, risk_score=rule.risk_score,
            techniques=rule.techniques, charge_point_id=event.key, message_id=None, action=None,
            ocpp_version=event.ocpp_version, direction=None, connection_id=event.connection_id,
            source_ip=event.client_ip, source_port=event.client_port, destination_ip=event.server_ip,
            destination_port=event.server_port, reason=finding.reason, evidence=finding.evidence,
            source_ref=event.source)

    def drop(self, keys: Iterable[str]) -> None:
        """Forget the state of keys this process no longer owns."""
        for key in keys:
            self.states.pop(key, None)

    def snapshot(self) -> dict[str, Any]:
        """The whole state, JSON-compatible."""
        return self.states

"""Alerts: ECS-style documents with a deterministic id.

``@timestamp`` is the capture time of the triggering message (never processing time), and
the id is a hash of the rule, the charge point and the triggering message, so a redelivered
message yields the very same document and indexing it again changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

CATEGORIES = ("mitm", "replay", "unauthorized_command", "abnormal_transaction", "security_event",
              "protocol_anomaly")
SEVERITY_NAMES = {1: "low", 2: "medium", 3: "high", 4: "critical"}


def alert_id(rule_id: str, charge_point_id: str, trigger: str) -> str:
    """Deterministic alert id from the rule, the charge point and the trigger's identity."""
    raw = f"{rule_id}\x1f{charge_point_id}\x1f{trigger}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def iso_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, as Elasticsearch's date type expects."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Alert:
    """One alert, ready to become an ECS document."""

    id: str
    ts: float
    rule_id: str
    rule_name: str
    category: str
    severity: int
    risk_score: int
    techniques: tuple[str, ...]
    charge_point_id: str
    message_id: str | None
    action: str | None
    ocpp_version: str | None
    direction: str | None
    connection_id: str | None
    source_ip: str | None
    source_port: int | None
    destination_ip: str | None
    destination_port: int | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    source_ref: str = ""
    # Storm collapsing: how often the rule fired on this key in the alert's window, the last
    # time, and the evidence of the latest occurrence (the fields above describe the first).
    count: int = 1
    last_ts: float | None = None
    latest: dict[str, Any] | None = None
    # ECS event.kind: "alert" (act on it) or "event" (a recorded fact, e.g. an expected reboot).
    kind: str = "alert"

    def with_storm(self, new_id: str, count: int, last_ts: float, latest: dict[str, Any] | None = None) -> Alert:
        """This alert as the collapsed alert of a storm (same first occurrence)."""
        return replace(self, id=new_id, count=count, last_ts=last_ts, latest=latest)

    def to_document(self) -> dict[str, Any]:
        """The ECS document indexed into Elasticsearch and written by ``--format jsonl``."""
        return {
            "@timestamp": iso_time(self.ts),
            "message": self.reason,
            "event": {
                "kind": self.kind, "id": self.id, "module": "chargewatch", "dataset": "chargewatch.alert",
                "category": ["network", "intrusion_detection"], "type": ["info"],
                "severity": self.severity, "risk_score": self.risk_score, "reference": self.source_ref,
                "start": iso_time(self.ts), "end": iso_time(self.last_ts if self.last_ts is not None else self.ts),
            },
            "rule": {"id": self.rule_id, "name": self.rule_name, "category": self.category,
                     "ruleset": "chargewatch"},
            "threat": {"framework": "MITRE ATT&CK for ICS",
                       "technique": {"id": list(self.techniques)}},
            "ocpp": {"charge_point_id": self.charge_point_id, "message_id": self.message_id,
                     "action": self.action, "version": self.ocpp_version, "direction": self.direction,
                     "connection_id": self.connection_id},
            "source": {"ip": self.source_ip, "port": self.source_port},
            "destination": {"ip": self.destination_ip, "port": self.destination_port},
            "chargewatch": {"evidence": self.evidence, "severity_name": SEVERITY_NAMES[self.severity],
                            "occurrences": self.count, "latest": self.latest},
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Alert:
        """Inverse of :meth:`to_document` (used by the Kafka alert consumers)."""
        ev, rule, ocpp = doc["event"], doc["rule"], doc["ocpp"]
        ts = _parse_time(doc["@timestamp"])
        return cls(
            id=ev["id"], ts=ts, rule_id=rule["id"], rule_name=rule["name"], category=rule["category"],
            severity=ev["severity"], risk_score=ev["risk_score"],
            techniques=tuple(doc.get("threat", {}).get("technique", {}).get("id", [])),
            charge_point_id=ocpp["charge_point_id"], message_id=ocpp.get("message_id"),
            action=ocpp.get("action"), ocpp_version=ocpp.get("version"), direction=ocpp.get("direction"),
            connection_id=ocpp.get("connection_id"), source_ip=doc["source"].get("ip"),
            source_port=doc["source"].get("port"), destination_ip=doc["destination"].get("ip"),
            destination_port=doc["destination"].get("port"), reason=doc["message"],
            evidence=doc["chargewatch"]["evidence"], source_ref=ev.get("reference", ""),
            count=doc["chargewatch"].get("occurrences", 1), latest=doc["chargewatch"].get("latest"),
            kind=ev.get("kind", "alert"),
            last_ts=_parse_time(ev["end"]) if doc["chargewatch"].get("occurrences", 1) > 1 else None,
        )


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

"""One definition of every document Chargewatch indexes (ECS names plus the ``ocpp.*`` and
``chargewatch.*`` groups): alerts, the OCPP message archive and the asset inventory. The
Elasticsearch index templates (``dashboards/elasticsearch/*.json``), the Kibana objects and
the built-in dashboard all use these names; a test fails when the committed templates drift
from this module.

Field names follow ECS 8.x where ECS has one (``@timestamp``, ``event.*``, ``rule.*``,
``threat.*``, ``source.*``, ``destination.*``, ``tls.*``, ``device.*``, ``related.*``);
OCPP-specific fields live under ``ocpp.*`` and Chargewatch's own under ``chargewatch.*``.
Payloads are stored (already redacted by the collector) but not indexed: their shape varies
by action and version, and indexing them would explode the mapping; the few payload values
responders search by are extracted into keyword fields."""

from __future__ import annotations

from typing import Any

ALERT_FIELDS: dict[str, dict[str, Any]] = {
    "@timestamp": {"type": "date"},
    "message": {"type": "text"},
    "event.kind": {"type": "keyword"},
    "event.id": {"type": "keyword"},
    "event.module": {"type": "keyword"},
    "event.dataset": {"type": "keyword"},
    "event.category": {"type": "keyword"},
    "event.type": {"type": "keyword"},
    "event.severity": {"type": "long"},
    "event.risk_score": {"type": "float"},
    "event.reference": {"type": "keyword"},
    "event.start": {"type": "date"},
    "event.end": {"type": "date"},
    "rule.id": {"type": "keyword"},
    "rule.name": {"type": "keyword"},
    "rule.category": {"type": "keyword"},
    "rule.ruleset": {"type": "keyword"},
    "threat.framework": {"type": "keyword"},
    "threat.technique.id": {"type": "keyword"},
    "ocpp.charge_point_id": {"type": "keyword"},
    "ocpp.message_id": {"type": "keyword"},
    "ocpp.action": {"type": "keyword"},
    "ocpp.version": {"type": "keyword"},
    "ocpp.direction": {"type": "keyword"},
    "ocpp.connection_id": {"type": "keyword"},
    "source.ip": {"type": "ip"},
    "source.port": {"type": "long"},
    "destination.ip": {"type": "ip"},
    "destination.port": {"type": "long"},
    # Evidence varies by rule: kept in _source, not indexed (no mapping explosion).
    "chargewatch.evidence": {"type": "object", "enabled": False},
    "chargewatch.severity_name": {"type": "keyword"},
    "chargewatch.occurrences": {"type": "long"},
    "chargewatch.latest": {"type": "object", "enabled": False},
    "chargewatch.site": {"type": "keyword"},  # the charge point's site (operator policy), for filters
    # Set by people (CLI/dashboard), never by the pipeline: the indexer carries it over.
    "triage.status": {"type": "keyword"},
    "triage.note": {"type": "text"},
    "triage.updated_by": {"type": "keyword"},
    "triage.updated_at": {"type": "date"},
}


# One record (OCPP message or connection event) as the detectors saw it; ``_id`` is the
# record's identity (chargewatch.resume), so redelivery overwrites instead of duplicating.
MESSAGE_FIELDS: dict[str, dict[str, Any]] = {
    "@timestamp": {"type": "date"},
    "event.kind": {"type": "keyword"},  # "event"
    "event.id": {"type": "keyword"},
    "event.module": {"type": "keyword"},  # "chargewatch"
    "event.dataset": {"type": "keyword"},  # "chargewatch.ocpp" (messages) or "chargewatch.connection"
    "event.action": {"type": "keyword"},  # OCPP action, or the connection event kind (upgrade, closed, tls, arp)
    "event.reference": {"type": "keyword"},  # source reference: file#frame, file#offset, proxy:NAME#N
    "event.sequence": {"type": "long"},  # capture time in microseconds: orders records within a millisecond
    "ocpp.charge_point_id": {"type": "keyword"},
    "ocpp.message_id": {"type": "keyword"},
    "ocpp.action": {"type": "keyword"},
    "ocpp.version": {"type": "keyword"},
    "ocpp.direction": {"type": "keyword"},  # cp->csms, csms->cp
    "ocpp.sender": {"type": "keyword"},  # cp, csms
    "ocpp.message_type": {"type": "long"},  # 2 CALL, 3 CALLRESULT, 4 CALLERROR, 5, 6 (2.1)
    "ocpp.message_type_name": {"type": "keyword"},  # CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND
    "ocpp.connection_id": {"type": "keyword"},
    "ocpp.frame_size": {"type": "long"},
    "ocpp.flags": {"type": "keyword"},
    "ocpp.transaction_id": {"type": "keyword"},  # extracted from the payload when present
    "ocpp.connector_id": {"type": "long"},  # 1.6 connectorId / 2.x evse.id
    "ocpp.id_token": {"type": "keyword"},  # the pseudonym (pt_...), never the clear idTag
    "ocpp.error_code": {"type": "keyword"},  # CALLERROR errorCode
    "ocpp.status": {"type": "keyword"},  # a CALLRESULT's payload status (Accepted, Rejected, ...): the outcome
    "ocpp.payload": {"type": "object", "enabled": False},  # redacted payload, stored not indexed
    "ocpp.subprotocol": {"type": "keyword"},  # connection events
    "ocpp.auth_scheme": {"type": "keyword"},
    "ocpp.auth_username": {"type": "keyword"},
    "ocpp.http_status": {"type": "long"},
    "tls.version": {"type": "keyword"},
    "tls.cipher": {"type": "keyword"},
    "tls.client.server_name": {"type": "keyword"},
    "tls.client.ja3": {"type": "keyword"},
    "tls.client.ja4": {"type": "keyword"},
    "tls.server.ja3s": {"type": "keyword"},
    "tls.server.hash.sha256": {"type": "keyword"},
    "source.ip": {"type": "ip"},
    "source.port": {"type": "long"},
    "source.mac": {"type": "keyword"},
    "destination.ip": {"type": "ip"},
    "destination.port": {"type": "long"},
    "network.ttl": {"type": "long"},  # IP TTL / hop limit of the packet that completed the frame
    "chargewatch.connection": {"type": "object", "enabled": False},  # the whole connection event
}

# One document per charge point, ``_id`` = charge point id, updated in place as records arrive.
ASSET_FIELDS: dict[str, dict[str, Any]] = {
    "@timestamp": {"type": "date"},  # last seen
    "event.kind": {"type": "keyword"},  # "asset"
    "ocpp.charge_point_id": {"type": "keyword"},
    "ocpp.version": {"type": "keyword"},  # negotiated on the latest connection
    "ocpp.firmware_version": {"type": "keyword"},
    "ocpp.security_profile": {"type": "long"},  # 0-3 as observed (plain/Basic/TLS/mTLS)
    "ocpp.auth_scheme": {"type": "keyword"},
    "ocpp.boot_status": {"type": "keyword"},  # last BootNotification answer
    "device.id": {"type": "keyword"},  # = charge point id
    "device.manufacturer": {"type": "keyword"},  # chargePointVendor / chargingStation.vendorName
    "device.model.name": {"type": "keyword"},
    "device.serial_number": {"type": "keyword"},
    "tls.version": {"type": "keyword"},
    "tls.cipher": {"type": "keyword"},
    "tls.client.ja4": {"type": "keyword"},
    "related.ip": {"type": "ip"},  # every address the charge point connected from (bounded)
    "source.ip": {"type": "ip"},  # latest address
    "chargewatch.site": {"type": "keyword"},  # from the operator policy
    "chargewatch.first_seen": {"type": "date"},
    "chargewatch.last_seen": {"type": "date"},
    "chargewatch.connections": {"type": "long"},
    "chargewatch.messages": {"type": "long"},
    "chargewatch.alerts.open": {"type": "long"},  # alerts not closed by triage
    "chargewatch.alerts.total": {"type": "long"},
    "chargewatch.alerts.max_severity": {"type": "long"},
    "chargewatch.alerts.last": {"type": "date"},
}


# One charging session (transaction) per document, ``_id`` = charge point id + transaction id:
# the features the anomaly models score (issue "transaction anomaly models") and their score.
#: Column of a session row (models.features.ROW_COLUMNS) -> field of the session document: one
#: mapping for the features code and the stores (which need no pandas to use it).
SESSION_ROW_FIELDS: dict[str, str] = {
    "charge_point_id": "ocpp.charge_point_id", "transaction_id": "ocpp.transaction_id",
    "connector_id": "ocpp.connector_id", "version": "ocpp.version", "id_token": "ocpp.id_token",
    "stop_reason": "ocpp.stop_reason", "remote_start": "ocpp.remote_start", "site": "chargewatch.site",
    "start": "event.start", "end": "event.end",
    **{name: f"chargewatch.session.{name}" for name in (
        "energy_wh", "duration_s", "avg_power_w", "peak_power_w", "rated_power_w", "power_ratio", "idle_s",
        "start_hour", "weekday", "meter_samples", "max_sample_gap_s", "register_drop_wh", "token_sessions_24h",
        "token_charge_points_24h")},
}

TRANSACTION_FIELDS: dict[str, dict[str, Any]] = {
    "@timestamp": {"type": "date"},  # session start
    "event.kind": {"type": "keyword"},  # "event"
    "event.start": {"type": "date"},
    "event.end": {"type": "date"},
    "event.duration": {"type": "long"},  # nanoseconds (ECS)
    "ocpp.charge_point_id": {"type": "keyword"},
    "ocpp.transaction_id": {"type": "keyword"},
    "ocpp.connector_id": {"type": "long"},
    "ocpp.version": {"type": "keyword"},
    "ocpp.id_token": {"type": "keyword"},  # pseudonym
    "ocpp.stop_reason": {"type": "keyword"},
    "ocpp.remote_start": {"type": "boolean"},
    "chargewatch.site": {"type": "keyword"},
    "chargewatch.session.energy_wh": {"type": "float"},
    "chargewatch.session.duration_s": {"type": "float"},
    "chargewatch.session.avg_power_w": {"type": "float"},
    "chargewatch.session.peak_power_w": {"type": "float"},
    "chargewatch.session.rated_power_w": {"type": "float"},  # connector rating (policy, else fleet default)
    "chargewatch.session.power_ratio": {"type": "float"},  # peak power / connector rating
    "chargewatch.session.idle_s": {"type": "float"},  # connected after charging stopped
    "chargewatch.session.start_hour": {"type": "long"},
    "chargewatch.session.weekday": {"type": "long"},
    "chargewatch.session.meter_samples": {"type": "long"},
    "chargewatch.session.max_sample_gap_s": {"type": "float"},
    "chargewatch.session.register_drop_wh": {"type": "float"},  # total fall of the meter register
    "chargewatch.session.token_sessions_24h": {"type": "long"},
    "chargewatch.session.token_charge_points_24h": {"type": "long"},
    "chargewatch.anomaly.score": {"type": "float"},  # higher = more anomalous
    "chargewatch.anomaly.threshold": {"type": "float"},
    "chargewatch.anomaly.is_anomaly": {"type": "boolean"},
    "chargewatch.anomaly.model": {"type": "keyword"},  # model name and version that scored it
    "chargewatch.anomaly.top_features": {"type": "keyword"},
}


def mapping_properties(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Nested ``properties`` of an Elasticsearch mapping from dotted field names."""
    root: dict[str, Any] = {}
    for dotted, spec in fields.items():
        parts = dotted.split(".") if dotted != "@timestamp" else [dotted]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = dict(spec)
    return root


def alert_index_template(index: str) -> dict[str, Any]:
    """Composable index template for the alerts index (a plain index: alerts are updated in place)."""
    return {
        "index_patterns": [index, f"{index}-*"],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"dynamic": "strict", "properties": mapping_properties(ALERT_FIELDS)},
        },
        "_meta": {"managed_by": "chargewatch", "document": "alert"},
    }

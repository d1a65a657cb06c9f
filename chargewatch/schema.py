"""One definition of the alert document's fields (ECS names plus the ``ocpp.*`` group);
the Elasticsearch index template is generated from it."""

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
    # Set by people (CLI/dashboard), never by the pipeline: the indexer carries it over.
    "triage.status": {"type": "keyword"},
    "triage.note": {"type": "text"},
    "triage.updated_by": {"type": "keyword"},
    "triage.updated_at": {"type": "date"},
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

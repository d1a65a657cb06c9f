"""The Elasticsearch alert store (client 8.x, matching the 8.x server).

Alerts are written with the ``create`` operation and their deterministic id: a redelivered
alert hits a version conflict and leaves the stored document (and any triage state people
added to it) untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chargewatch.alerts import Alert, iso_time
from chargewatch.config import ElasticsearchConfig
from chargewatch.errors import ServiceError, StoreError
from chargewatch.schema import alert_index_template
from chargewatch.store import AlertQuery

MAX_ATTEMPTS = 5


class ElasticAlertStore:
    """Alert store in one Elasticsearch index."""

    def __init__(self, cfg: ElasticsearchConfig) -> None:
        from elasticsearch import Elasticsearch

        self.cfg = cfg
        self.index = cfg.alerts_index
        self.client = Elasticsearch(cfg.url, request_timeout=cfg.request_timeout)

    def check(self) -> None:
        """Raise ServiceError unless the cluster answers (this build has no ``GET /``)."""
        from elasticsearch import ApiError, TransportError

        try:
            self.client.cluster.health()
        except (ApiError, TransportError) as exc:
            raise ServiceError(f"Elasticsearch at {self.cfg.url} unreachable: {exc}") from exc

    def setup(self) -> str:
        self.check()
        self.client.indices.put_index_template(name=self.index, **alert_index_template(self.index))
        if not self.client.indices.exists(index=self.index):
            self.client.options(ignore_status=400).indices.create(index=self.index)
        return f"index template {self.index} installed; alerts index {self.index} ready at {self.cfg.url}"

    def put_alerts(self, alerts: Sequence[Alert]) -> int:
        pending = {a.id: a for a in alerts}  # a batch may hold several versions of a storm: the last wins
        written = 0
        for _attempt in range(MAX_ATTEMPTS):
            if not pending:
                return written
            conflicts = self._write(pending)
            written += len(pending) - len(conflicts)
            pending = {i: pending[i] for i in conflicts}
        raise StoreError(f"{len(pending)} alert(s) in {self.index} kept changing under us; e.g. {next(iter(pending))}")

    def _write(self, alerts: dict[str, Alert]) -> set[str]:
        """One optimistic round: new alerts are created, stored ones replaced only if unchanged
        since read, carrying over ``triage``. Returns the ids that hit a concurrent change."""
        from elasticsearch import helpers

        existing = self._current(list(alerts))
        actions = []
        for alert_id_, alert in alerts.items():
            doc = alert.to_document()
            action: dict[str, Any] = {"_index": self.index, "_id": alert_id_, "_source": doc}
            if alert_id_ in existing:
                seq_no, term, triage = existing[alert_id_]
                if triage is not None:
                    doc["triage"] = triage
                action |= {"_op_type": "index", "if_seq_no": seq_no, "if_primary_term": term}
            else:
                action["_op_type"] = "create"
            actions.append(action)
        _ok, result = helpers.bulk(self.client, actions, raise_on_error=False, raise_on_exception=False,
                                   stats_only=False)
        errors: list[dict[str, Any]] = result if isinstance(result, list) else []
        real = [e for e in errors if _status(e) != 409]
        if real:
            raise StoreError(f"Elasticsearch refused {len(real)} alert(s) in {self.index}: {real[0]}")
        return {_doc_id(e) for e in errors if _status(e) == 409}

    def _current(self, ids: list[str]) -> dict[str, tuple[int, int, Any]]:
        """Stored alerts among ids: (seq_no, primary_term, triage or None)."""
        resp = self.client.mget(index=self.index, ids=ids, source_includes=["triage"])
        return {d["_id"]: (d["_seq_no"], d["_primary_term"], d.get("_source", {}).get("triage"))
                for d in resp["docs"] if d.get("found")}

    def refresh(self) -> None:
        self.client.indices.refresh(index=self.index)

    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        if query.since is not None:
            filters.append({"range": {"@timestamp": {"gte": iso_time(query.since)}}})
        for field_name, value in (("ocpp.charge_point_id", query.charge_point_id), ("rule.category", query.category),
                                  ("rule.id", query.rule_id)):
            if value is not None:
                filters.append({"term": {field_name: value}})
        if query.min_severity is not None:
            filters.append({"range": {"event.severity": {"gte": query.min_severity}}})
        resp = self.client.search(index=self.index, query={"bool": {"filter": filters}}, size=query.limit,
                                  sort=[{"@timestamp": "desc"}, {"event.id": "asc"}])
        return [hit["_source"] for hit in resp["hits"]["hits"]]

    def close(self) -> None:
        self.client.close()


def _doc_id(error: dict[str, Any]) -> str:
    for body in error.values():
        if isinstance(body, dict):
            return str(body.get("_id", ""))
    return ""


def _status(error: dict[str, Any]) -> int:
    for body in error.values():
        if isinstance(body, dict):
            return int(body.get("status", 0))
    return 0

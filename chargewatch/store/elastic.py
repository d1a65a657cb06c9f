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
        if not alerts:
            return 0
        from elasticsearch import helpers

        actions = [{"_op_type": "create", "_index": self.index, "_id": a.id, "_source": a.to_document()}
                   for a in alerts]
        created, errors = helpers.bulk(self.client, actions, raise_on_error=False, raise_on_exception=False,
                                       stats_only=False)
        real = [e for e in errors if _status(e) != 409]  # type: ignore[union-attr]
        if real:
            raise StoreError(f"Elasticsearch refused {len(real)} alert(s) in {self.index}: {real[0]}")
        return int(created)

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


def _status(error: dict[str, Any]) -> int:
    for body in error.values():
        if isinstance(body, dict):
            return int(body.get("status", 0))
    return 0

"""The Elasticsearch store (client 8.x, matching the 8.x server): alerts, the message archive,
the asset inventory and the charging sessions (layout: :mod:`chargewatch.store.es_templates`; retention:
:mod:`chargewatch.store.es_retention`; archive and assets: :mod:`chargewatch.store.es_archive`).

Alerts are created with their deterministic id; a stored alert (a storm's earlier version) is
replaced only if unchanged since it was read (``if_seq_no``), carrying over what people added
(``triage``) and the site. Triage itself is written the same way, so a person and the pipeline
never overwrite each other.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from chargewatch.alerts import Alert, iso_time
from chargewatch.config import ElasticsearchConfig
from chargewatch.errors import ServiceError, StoreError
from chargewatch.model import Record
from chargewatch.store import TRIAGE_STATES, AlertQuery, MessageQuery, es_archive
from chargewatch.store.es_retention import (
    Retention,
    SweepResult,
    archive_indices,
    ilm_running,
    ilm_settings,
    install_ilm,
    sweep,
)
from chargewatch.store.es_templates import IndexNames, index_templates

MAX_ATTEMPTS = 5
P = ParamSpec("P")
R = TypeVar("R")
Method = Callable[Concatenate["ElasticAlertStore", P], R]


def _es_errors(method: Method[P, R]) -> Method[P, R]:
    """Turn the client's exceptions into ours: ServiceError when the cluster cannot be reached,
    StoreError when it refused the request (both name the URL and the operation)."""

    @functools.wraps(method)
    def wrapper(store: ElasticAlertStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        from elasticsearch import ApiError, TransportError

        try:
            return method(store, *args, **kwargs)
        except ApiError as exc:
            raise StoreError(f"Elasticsearch at {store.cfg.url} refused {method.__name__}: {exc}") from exc
        except TransportError as exc:
            raise ServiceError(f"Elasticsearch at {store.cfg.url} unreachable ({method.__name__}): {exc}") from exc

    return wrapper


class ElasticAlertStore:
    """The :class:`chargewatch.store.Store` on Elasticsearch."""

    def __init__(self, cfg: ElasticsearchConfig, clock: Callable[[], float] = time.time) -> None:
        from elasticsearch import Elasticsearch

        self.cfg = cfg
        self.names = IndexNames.from_config(cfg)
        self.index = cfg.alerts_index
        self.clock = clock
        self.client = Elasticsearch(cfg.url, request_timeout=cfg.request_timeout)
        self._retention: Retention | None = None

    def check(self) -> None:
        """Raise ServiceError unless the cluster answers (this build has no ``GET /``)."""
        from elasticsearch import ApiError, TransportError

        try:
            self.client.cluster.health()
        except (ApiError, TransportError) as exc:
            raise ServiceError(f"Elasticsearch at {self.cfg.url} unreachable: {exc}") from exc

    @_es_errors
    def retention(self) -> Retention:
        """The retention in force (asks the cluster once whether it has ILM)."""
        if self._retention is None:
            self._retention = Retention.from_config(self.cfg, ilm_running(self.client))
        return self._retention

    @_es_errors
    def setup(self) -> str:
        self.check()
        retention = self.retention()
        lines = []
        templates = index_templates(self.names)
        if retention.ilm:
            lines.append(install_ilm(self.client, self.names, retention))
            templates[self.names.messages_template]["template"]["settings"] |= ilm_settings(self.names)
        for name, body in templates.items():
            self.client.indices.put_index_template(name=name, **body)
            lines.append(f"index template {name} installed (indices {', '.join(body['index_patterns'])})")
        for index, template, what in ((self.index, self.index, "alerts index"),
                                      (self.names.assets, self.names.assets, "asset index"),
                                      (self.names.transactions, self.names.transactions, "transactions index")):
            lines.append(f"{what} {index} {self._ensure_index(index, templates[template])}")
        archive = archive_indices(self.client, self.names)
        if archive:
            self._put_mapping(",".join(archive), templates[self.names.messages_template])
        lines.append(f"message archive: {len(archive)} daily index(es) {self.names.messages_pattern} "
                     "(a new one is created for each day of records)")
        lines.append(retention.describe(self.names, self.cfg.retention_sweep_interval_s))
        lines.append(self.sweep().describe())
        return "\n".join(lines)

    def _ensure_index(self, index: str, template: dict[str, Any]) -> str:
        """Create index from its template, or bring an existing one's mapping up to date."""
        if not self.client.indices.exists(index=index):
            resp = self.client.options(ignore_status=400).indices.create(index=index)
            if resp.get("acknowledged"):
                return "created"
        self._put_mapping(index, template)
        return "already there (mapping brought up to date)"

    def _put_mapping(self, index: str, template: dict[str, Any]) -> None:
        from elasticsearch import BadRequestError

        mappings = template["template"]["mappings"]
        try:
            self.client.indices.put_mapping(index=index, properties=mappings["properties"],
                                            dynamic=mappings["dynamic"])
        except BadRequestError as exc:
            raise StoreError(f"{index}: existing mapping conflicts with chargewatch/schema.py ({exc}); "
                             "reindex the data into a new index or delete it, then run setup again") from exc

    @_es_errors
    def sweep(self, now: float | None = None) -> SweepResult:
        """Delete what is older than the retention (now: epoch seconds, default the clock)."""
        return sweep(self.client, self.names, self.retention(), self.clock() if now is None else now)

    # --- alerts ----------------------------------------------------------------------------

    @_es_errors
    def put_alerts(self, alerts: Sequence[Alert], sites: dict[str, str] | None = None) -> int:
        """Upsert alerts (see the module doc); sites maps charge point ids to their site
        (``chargewatch.site``; without an entry the stored site is kept)."""
        pending = {a.id: a for a in alerts}  # a batch may hold several versions of a storm: the last wins
        written = 0
        for _attempt in range(MAX_ATTEMPTS):
            if not pending:
                return written
            conflicts = self._write(pending, sites or {})
            written += len(pending) - len(conflicts)
            pending = {i: pending[i] for i in conflicts}
        raise StoreError(f"{len(pending)} alert(s) in {self.index} kept changing under us; e.g. {next(iter(pending))}")

    def _write(self, alerts: dict[str, Alert], sites: dict[str, str]) -> set[str]:
        """One optimistic round: new alerts are created, stored ones replaced only if unchanged
        since read, carrying over ``triage`` and the site. Returns the ids that hit a concurrent change."""
        from elasticsearch import helpers

        existing = self._current(list(alerts))
        actions = []
        for alert_id_, alert in alerts.items():
            doc = alert.to_document()
            action: dict[str, Any] = {"_index": self.index, "_id": alert_id_, "_source": doc}
            seq_no, term, triage, site = existing.get(alert_id_, (None, None, None, None))
            site = sites.get(alert.charge_point_id) or site
            if site:
                doc["chargewatch"]["site"] = site
            if seq_no is not None:
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

    def _current(self, ids: list[str]) -> dict[str, tuple[int, int, Any, str | None]]:
        """Stored alerts among ids: (seq_no, primary_term, triage or None, site or None)."""
        resp = self.client.mget(index=self.index, ids=ids, source_includes=["triage", "chargewatch.site"])
        return {d["_id"]: (d["_seq_no"], d["_primary_term"], d.get("_source", {}).get("triage"),
                           d.get("_source", {}).get("chargewatch", {}).get("site"))
                for d in resp["docs"] if d.get("found")}

    @_es_errors
    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        resp = self.client.options(ignore_status=404).get(index=self.index, id=alert_id)
        return resp["_source"] if resp.get("found") else None

    @_es_errors
    def set_triage(self, alert_id: str, status: str, note: str, user: str) -> dict[str, Any]:
        from elasticsearch import ConflictError

        if status not in TRIAGE_STATES:
            raise StoreError(f"unknown triage state {status!r}; use one of {', '.join(TRIAGE_STATES)}")
        for _attempt in range(MAX_ATTEMPTS):
            resp = self.client.options(ignore_status=404).get(index=self.index, id=alert_id)
            if not resp.get("found"):
                raise StoreError(f"no alert {alert_id!r} in {self.index}")
            doc: dict[str, Any] = resp["_source"]
            doc["triage"] = {"status": status, "note": note, "updated_by": user, "updated_at": iso_time(self.clock())}
            try:
                self.client.index(index=self.index, id=alert_id, document=doc, if_seq_no=resp["_seq_no"],
                                  if_primary_term=resp["_primary_term"], refresh="wait_for")
            except ConflictError:
                continue  # the pipeline updated the storm meanwhile: read again, set again
            return doc
        raise StoreError(f"alert {alert_id!r} in {self.index} kept changing under us; try again")

    @_es_errors
    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = []
        window = {op: iso_time(ts) for op, ts in (("gte", query.since), ("lte", query.until)) if ts is not None}
        if window:
            filters.append({"range": {"@timestamp": window}})
        for field_name, value in (("ocpp.charge_point_id", query.charge_point_id), ("rule.category", query.category),
                                  ("rule.id", query.rule_id), ("chargewatch.site", query.site)):
            if value is not None:
                filters.append({"term": {field_name: value}})
        if query.min_severity is not None:
            filters.append({"range": {"event.severity": {"gte": query.min_severity}}})
        if query.triage_status == "new":  # nobody triaged it yet, or someone set it back to new
            filters.append({"bool": {"should": [{"term": {"triage.status": "new"}},
                                                {"bool": {"must_not": [{"exists": {"field": "triage.status"}}]}}]}})
        elif query.triage_status is not None:
            filters.append({"term": {"triage.status": query.triage_status}})
        resp = self.client.options(ignore_status=404).search(
            index=self.index, query={"bool": {"filter": filters}}, size=query.limit,
            sort=[{"@timestamp": "desc"}, {"event.id": "asc"}])
        return [hit["_source"] for hit in resp.get("hits", {}).get("hits", [])]

    # --- message archive and assets ----------------------------------------------------------

    @_es_errors
    def put_records(self, records: Sequence[Record], sites: dict[str, str] | None = None) -> int:
        """Archive records and update the asset inventory (see :mod:`chargewatch.store.es_archive`);
        returns how many records were new to the archive."""
        return es_archive.put_records(self.client, self.names, records, sites)

    @_es_errors
    def messages(self, query: MessageQuery) -> list[dict[str, Any]]:
        return es_archive.messages(self.client, self.names, query)

    @_es_errors
    def assets(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        return es_archive.assets(self.client, self.names, charge_point_id)

    @_es_errors
    def put_sessions(self, sessions: Sequence[Mapping[str, Any]]) -> int:
        """Index charging sessions with their scores (see :func:`es_archive.session_document`); a
        session written again replaces its document. Returns how many were written."""
        return es_archive.put_sessions(self.client, self.names, sessions)

    @_es_errors
    def transactions(self, charge_point_id: str | None = None, since: float | None = None,
                     until: float | None = None, limit: int = 1_000) -> list[dict[str, Any]]:
        """Session documents, newest start first (the dashboard's transactions page)."""
        return es_archive.transactions(self.client, self.names, charge_point_id, since, until, limit)

    @_es_errors
    def refresh(self) -> None:
        self.client.indices.refresh(index=f"{self.index},{self.names.assets},{self.names.messages_pattern},"
                                          f"{self.names.transactions}",
                                    ignore_unavailable=True, allow_no_indices=True)

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

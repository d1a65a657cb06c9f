"""The message archive and the asset inventory in Elasticsearch.

Records are archived in daily indices (``<prefix>-messages-YYYY.MM.DD`` by record time, see
:mod:`chargewatch.store.es_templates`) with the ``create`` operation and the stable id of
:func:`chargewatch.store.documents.record_id`: a redelivered record hits a version conflict
and changes nothing. The bulk response says which records were new, and only those add to an
asset's message and connection counts, so counts stay exact under redelivery. (A crash
between the archive write and the asset write leaves that batch's records uncounted when they
come again; every other asset field is rebuilt from them.)

Sessions (one document per finished charging session with its features and, when the model
scored it, its score: :data:`chargewatch.schema.TRANSACTION_FIELDS`) go to ``<prefix>-transactions``
with ``_id`` derived from the charge point and transaction id, so writing a session again
replaces it (idempotent); :func:`session_document` and :func:`session_row` convert both ways
(the SQLite store uses the same documents).

Assets are read, merged (:func:`chargewatch.store.documents.merge_asset`) and written back with
optimistic concurrency (``if_seq_no``), because the minimal clusters we test on have no
scripting to update them in place.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from chargewatch.alerts import iso_time
from chargewatch.errors import StoreError
from chargewatch.model import Record
from chargewatch.schema import SESSION_ROW_FIELDS
from chargewatch.store import MessageQuery
from chargewatch.store.documents import (
    AssetObservation,
    get_field,
    merge_asset,
    observe_assets,
    record_document,
    record_id,
)
from chargewatch.store.es_templates import IndexNames

MAX_ATTEMPTS = 5
ASSET_PAGE = 1_000
_TIMES = frozenset({"start", "end"})
#: Scoring keys of a session mapping -> field of the document.
SCORE_FIELDS = {"score": "chargewatch.anomaly.score", "threshold": "chargewatch.anomaly.threshold",
                "model": "chargewatch.anomaly.model", "top_features": "chargewatch.anomaly.top_features"}


def session_id(charge_point_id: str, transaction_id: str) -> str:
    """Document id of a session: stable for its charge point and transaction id."""
    return hashlib.sha256(f"{charge_point_id}\x00{transaction_id}".encode()).hexdigest()[:32]


def session_document(session: Mapping[str, Any]) -> dict[str, Any]:
    """The transactions-index document of a session: a row (``SessionRow.as_dict()``, times in
    epoch seconds) with, when scored, ``score``, ``threshold``, ``model`` and ``top_features``
    (feature names)."""
    doc: dict[str, Any] = {}
    for column, dotted in [*SESSION_ROW_FIELDS.items(), *SCORE_FIELDS.items()]:
        if column not in session or session[column] is None:
            continue
        value = session[column]
        if column in _TIMES:
            value = iso_time(float(value))
        elif column == "remote_start":
            value = bool(value)
        elif isinstance(value, float) and not math.isfinite(value):  # NaN/inf: not a value for a float field
            continue
        _set(doc, dotted, value)
    start, end = float(session["start"]), float(session["end"])
    doc["@timestamp"] = iso_time(start)
    event = doc.setdefault("event", {})
    event["kind"] = "event"
    event["duration"] = max(0, round((end - start) * 1e9))
    if "score" in session and "threshold" in session:
        doc["chargewatch"]["anomaly"]["is_anomaly"] = float(session["score"]) > float(session["threshold"])
    return doc


def session_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The row (and scoring keys) of a session document: the inverse of :func:`session_document`."""
    row: dict[str, Any] = {}
    for column, dotted in [*SESSION_ROW_FIELDS.items(), *SCORE_FIELDS.items()]:
        value = get_field(doc, dotted)
        if value is None:
            continue
        row[column] = _epoch(value) if column in _TIMES else int(value) if column == "remote_start" else value
    return row


def _epoch(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[leaf] = value


def put_sessions(client: Any, names: IndexNames, sessions: Sequence[Mapping[str, Any]]) -> int:
    """Index session documents (a session written again replaces its document); returns how many."""
    actions = [{"_op_type": "index", "_index": names.transactions,
                "_id": session_id(str(s["charge_point_id"]), str(s["transaction_id"])), "_source": session_document(s)}
               for s in sessions]
    if actions:
        _bulk(client, actions, "session")
    return len(actions)


def transactions(client: Any, names: IndexNames, charge_point_id: str | None, since: float | None,
                 until: float | None, limit: int) -> list[dict[str, Any]]:
    """Session documents by start time (newest first), of one charge point and a time range."""
    filters: list[dict[str, Any]] = []
    if charge_point_id is not None:
        filters.append({"term": {"ocpp.charge_point_id": charge_point_id}})
    window = {op: iso_time(ts) for op, ts in (("gte", since), ("lte", until)) if ts is not None}
    if window:
        filters.append({"range": {"@timestamp": window}})
    sort = [{"@timestamp": "desc"}, {"ocpp.charge_point_id": "asc"}, {"ocpp.transaction_id": "asc"}]
    return [doc for page in _pages(client, names.transactions, {"bool": {"filter": filters}}, sort, limit)
            for doc in page]


def put_records(client: Any, names: IndexNames, records: Sequence[Record], sites: dict[str, str] | None) -> int:
    """Archive records and update the assets they name; returns how many records were new."""
    if not records:
        return 0
    unique: dict[tuple[str, str], tuple[Record, dict[str, Any]]] = {}
    for record in records:  # a batch may hold one record twice (redelivery): keep the first
        key = (names.messages_index(record.ts), record_id(record))
        if key not in unique:
            doc = record_document(record)
            # Capture time to the microsecond: orders records within one millisecond of @timestamp.
            doc.setdefault("event", {}).setdefault("sequence", round(record.ts * 1_000_000))
            unique[key] = (record, {"_op_type": "create", "_index": key[0], "_id": key[1], "_source": doc})
    existed = _bulk(client, [action for _record, action in unique.values()], "archive")
    new = [record for key, (record, _action) in unique.items() if key not in existed]
    _put_assets(client, names, _observations(records, new), sites or {})
    return len(new)


def _observations(records: Sequence[Record], new: Sequence[Record]) -> dict[str, AssetObservation]:
    """Observations of every record (facts, addresses, first/last seen are idempotent) whose
    counts include only the new ones."""
    everything, fresh = observe_assets(records), observe_assets(new)
    for cp_id, obs in everything.items():
        counted = fresh.get(cp_id)
        obs.messages = counted.messages if counted else 0
        obs.connections = counted.connections if counted else 0
    return everything


def _put_assets(client: Any, names: IndexNames, observations: dict[str, AssetObservation],
                sites: dict[str, str]) -> None:
    pending = dict(observations)
    for _attempt in range(MAX_ATTEMPTS):
        if not pending:
            return
        resp = client.mget(index=names.assets, ids=list(pending))
        stored = {d["_id"]: d for d in resp["docs"] if d.get("found")}
        actions = []
        for cp_id, obs in pending.items():
            current = stored.get(cp_id)
            action: dict[str, Any] = {"_index": names.assets, "_id": cp_id,
                                      "_source": merge_asset(current["_source"] if current else None, obs,
                                                             sites.get(cp_id))}
            if current:
                action |= {"_op_type": "index", "if_seq_no": current["_seq_no"],
                           "if_primary_term": current["_primary_term"]}
            else:
                action["_op_type"] = "create"
            actions.append(action)
        conflicts = {doc_id for _index, doc_id in _bulk(client, actions, "asset")}
        pending = {cp: pending[cp] for cp in conflicts}
    raise StoreError(f"{len(pending)} asset(s) in {names.assets} kept changing under us; e.g. {next(iter(pending))}")


def _bulk(client: Any, actions: list[dict[str, Any]], what: str) -> set[tuple[str, str]]:
    """Bulk-write actions; returns (index, id) of those that hit a version conflict (409).
    Any other refusal raises StoreError: the caller must not acknowledge the batch."""
    from elasticsearch import helpers

    _ok, errors = helpers.bulk(client, actions, raise_on_error=False, raise_on_exception=False, stats_only=False,
                               chunk_size=2_000, max_chunk_bytes=50 * 1024 * 1024)
    conflicts: set[tuple[str, str]] = set()
    refused = []
    for error in errors if isinstance(errors, list) else []:
        body: Any = next(iter(error.values()), {})
        if isinstance(body, dict) and body.get("status") == 409:
            conflicts.add((str(body.get("_index")), str(body.get("_id"))))
        else:
            refused.append(body)
    if refused:
        raise StoreError(f"Elasticsearch refused {len(refused)} {what} document(s): {refused[0]}")
    return conflicts


def messages(client: Any, names: IndexNames, query: MessageQuery) -> list[dict[str, Any]]:
    """Archived record documents matching query, oldest first."""
    filters: list[dict[str, Any]] = []
    for field_name, value in (("ocpp.charge_point_id", query.charge_point_id),
                              ("ocpp.connection_id", query.connection_id)):
        if value is not None:
            filters.append({"term": {field_name: value}})
    window = {op: iso_time(ts) for op, ts in (("gte", query.since), ("lte", query.until)) if ts is not None}
    if window:
        filters.append({"range": {"@timestamp": window}})
    sort: list[dict[str, Any]] = [{"@timestamp": "asc"}, {"event.sequence": {"order": "asc", "missing": "_first"}},
                                  {"event.id": "asc"}]
    return [doc for page in _pages(client, names.messages_pattern, {"bool": {"filter": filters}}, sort, query.limit)
            for doc in page]


def assets(client: Any, names: IndexNames, charge_point_id: str | None) -> list[dict[str, Any]]:
    """Asset documents (sorted by charge point id) with their alert counts filled in."""
    query: dict[str, Any] = {"term": {"ocpp.charge_point_id": charge_point_id}} if charge_point_id else {
        "match_all": {}}
    out: list[dict[str, Any]] = []
    for page in _pages(client, names.assets, query, [{"ocpp.charge_point_id": "asc"}], sys.maxsize, ASSET_PAGE):
        _fill_alert_counts(client, names, page)
        out += page
    return out


def _pages(client: Any, index: str, query: dict[str, Any], sort: list[dict[str, Any]], limit: int,
           page: int = 5_000) -> Iterator[list[dict[str, Any]]]:
    """The matching documents (their sources) in sort order, page by page (search_after), at
    most limit in all; a missing index is no document."""
    after: list[Any] | None = None
    while limit > 0:
        size = min(limit, page)
        extra = {"search_after": after} if after is not None else {}
        resp = client.search(index=index, query=query, size=size, sort=sort, ignore_unavailable=True,
                             allow_no_indices=True, **extra)
        hits = resp["hits"]["hits"]
        yield [hit["_source"] for hit in hits]
        limit -= len(hits)
        if len(hits) < size:
            return
        after = hits[-1]["sort"]


def _fill_alert_counts(client: Any, names: IndexNames, page: list[dict[str, Any]]) -> None:
    """Set ``chargewatch.alerts.*`` of each asset from the alerts index (``event.kind`` alert
    only; open = not closed by triage)."""
    if not page:
        return
    ids = [doc["ocpp"]["charge_point_id"] for doc in page]
    resp = client.search(
        index=names.alerts, size=0, ignore_unavailable=True, allow_no_indices=True,
        query={"bool": {"filter": [{"terms": {"ocpp.charge_point_id": ids}}, {"term": {"event.kind": "alert"}}]}},
        aggs={"cp": {"terms": {"field": "ocpp.charge_point_id", "size": len(ids)},
                     "aggs": {"open": {"filter": {"bool": {"must_not": [{"term": {"triage.status": "closed"}}]}}},
                              "max_severity": {"max": {"field": "event.severity"}},
                              "last": {"max": {"field": "event.end"}}}}})
    buckets = {b["key"]: b for b in resp.get("aggregations", {}).get("cp", {}).get("buckets", [])}
    for doc in page:
        bucket = buckets.get(doc["ocpp"]["charge_point_id"])
        counts: dict[str, Any] = {"open": 0, "total": 0}
        if bucket:
            counts = {"open": bucket["open"]["doc_count"], "total": bucket["doc_count"],
                      "max_severity": int(bucket["max_severity"]["value"]),
                      "last": iso_time(bucket["last"]["value"] / 1000)}
        doc.setdefault("chargewatch", {})["alerts"] = counts

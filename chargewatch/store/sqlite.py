"""The embedded store: alerts, the record archive, the asset inventory and the charging sessions
in one SQLite file.

It implements the whole :class:`~chargewatch.store.Store` protocol for running without
Elasticsearch (``chargewatch analyze --store FILE.db``, then the responder commands and the
built-in dashboard on the same file). Documents are the Elasticsearch ones
(:mod:`chargewatch.store.documents`, :mod:`chargewatch.schema`), kept as JSON next to the few
columns queries filter on.

* Alerts are upserted by their deterministic id. Triage lives in its own table that only
  :meth:`SqliteAlertStore.set_triage` writes, so re-putting alerts can never overwrite it; it
  is joined into the document when read (``triage``), like the site (``chargewatch.site``).
* Records are archived by :func:`~chargewatch.store.documents.record_id`: the same records
  twice give the same rows, and only records new to the archive update the asset counts.
* Sessions (the documents of :func:`~chargewatch.store.es_archive.session_document`, with
  their anomaly scores) are upserted by charge point and transaction id.
* The file runs in WAL mode, so the dashboard can read while ``analyze`` writes; writes take
  the write lock up front (``BEGIN IMMEDIATE``), so a triage and a pipeline write never race.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from chargewatch.alerts import Alert, iso_time
from chargewatch.errors import StoreError
from chargewatch.model import Record
from chargewatch.store import TRIAGE_STATES, AlertQuery, MessageQuery
from chargewatch.store.documents import merge_asset, observe_assets, record_document, record_id
from chargewatch.store.es_archive import session_document, session_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    rule_id TEXT NOT NULL,
    category TEXT NOT NULL,
    severity INTEGER NOT NULL,
    charge_point_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE INDEX IF NOT EXISTS alerts_cp ON alerts (charge_point_id, ts);
CREATE TABLE IF NOT EXISTS triage (
    alert_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    note TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    charge_point_id TEXT,
    connection_id TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_cp ON messages (charge_point_id, ts);
CREATE INDEX IF NOT EXISTS messages_connection ON messages (connection_id, ts);
CREATE INDEX IF NOT EXISTS messages_ts ON messages (ts);
CREATE TABLE IF NOT EXISTS assets (
    charge_point_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    charge_point_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_ts ON sessions (ts);
CREATE INDEX IF NOT EXISTS sessions_cp ON sessions (charge_point_id, ts);
CREATE TABLE IF NOT EXISTS captures (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL
);
"""
# Columns added to the alerts table of stores written by earlier versions (name, declaration).
ALERT_COLUMNS = (("kind", "TEXT NOT NULL DEFAULT 'alert'"), ("site", "TEXT"))
CHUNK = 500  # ids per IN (...) lookup: well below SQLite's limit on bound parameters

_ALERT_SELECT = ("SELECT a.doc, a.site, t.status, t.note, t.updated_by, t.updated_at "
                 "FROM alerts a LEFT JOIN triage t ON t.alert_id = a.id")


class SqliteAlertStore:
    """The whole Store protocol in one SQLite file (see the module docstring).

    create=False refuses a file that does not exist (the responder commands: a typo must not
    silently query a new, empty store). clock gives the time of triage changes.
    """

    def __init__(self, path: Path, create: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.path, self.clock = path, clock
        if not create and not path.is_file():
            raise StoreError(f"{path}: no such SQLite store (create one with `chargewatch analyze --store {path}`)")
        try:
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open SQLite store: {exc}") from exc

    def _migrate(self) -> None:
        """Bring an alerts table written by an earlier version up to the current columns."""
        present = {row[1] for row in self.db.execute("PRAGMA table_info(alerts)")}
        for name, declaration in ALERT_COLUMNS:
            if name not in present:
                self.db.execute(f"ALTER TABLE alerts ADD COLUMN {name} {declaration}")
        if "kind" not in present:
            self.db.execute("UPDATE alerts SET kind = COALESCE(json_extract(doc, '$.event.kind'), 'alert')")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its start; StoreError on failure."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: SQLite write failed: {exc}") from exc

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: SQLite query failed: {exc}") from exc

    def setup(self) -> str:
        return (f"SQLite store ready at {self.path} (alerts, record archive, assets, sessions); no retention: "
                "the file keeps everything until it is deleted")

    # --- alerts ---------------------------------------------------------------------------------

    def put_alerts(self, alerts: Sequence[Alert], sites: dict[str, str] | None = None) -> int:
        """Upsert alerts by id (triage, in its own table, is untouched); sites maps charge point
        ids to their site, else the asset inventory's site is used, else the stored one is kept."""
        latest = {a.id: a for a in alerts}  # a batch may hold several versions of a storm: the last wins
        with self._write() as db:
            sites = self._sites(db, {a.charge_point_id for a in latest.values()}) | (sites or {})
            db.executemany(
                "INSERT INTO alerts (id, ts, rule_id, category, severity, charge_point_id, doc, kind, site) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET ts = excluded.ts, "
                "rule_id = excluded.rule_id, category = excluded.category, severity = excluded.severity, "
                "charge_point_id = excluded.charge_point_id, doc = excluded.doc, kind = excluded.kind, "
                "site = COALESCE(excluded.site, alerts.site)",
                [(a.id, a.ts, a.rule_id, a.category, a.severity, a.charge_point_id,
                  json.dumps(a.to_document(), sort_keys=True), a.kind, sites.get(a.charge_point_id))
                 for a in latest.values()])
        return len(latest)

    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        clauses, args = _alert_filters(query)
        sql = f"{_ALERT_SELECT} {clauses} ORDER BY a.ts DESC, a.id LIMIT ?"
        return [_alert_document(row) for row in self._read(sql, [*args, query.limit])]

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        rows = self._read(f"{_ALERT_SELECT} WHERE a.id = ?", [alert_id])
        return _alert_document(rows[0]) if rows else None

    def set_triage(self, alert_id: str, status: str, note: str, user: str) -> dict[str, Any]:
        if status not in TRIAGE_STATES:
            raise StoreError(f"unknown triage status {status!r}; one of: {', '.join(TRIAGE_STATES)}")
        with self._write() as db:
            if db.execute("SELECT 1 FROM alerts WHERE id = ?", [alert_id]).fetchone() is None:
                raise StoreError(f"no alert with id {alert_id!r} in {self.path}")
            db.execute("INSERT INTO triage VALUES (?, ?, ?, ?, ?) ON CONFLICT(alert_id) DO UPDATE SET "
                       "status = excluded.status, note = excluded.note, updated_by = excluded.updated_by, "
                       "updated_at = excluded.updated_at", [alert_id, status, note, user, self.clock()])
        doc = self.get_alert(alert_id)
        assert doc is not None  # alerts are never deleted
        return doc

    # --- records and assets ---------------------------------------------------------------------

    def put_records(self, records: Sequence[Record], sites: dict[str, str] | None = None) -> int:
        """Archive records and update the assets; returns how many records were new to the archive."""
        sites = sites or {}
        with self._write() as db:
            fresh = self._archive(db, records)
            observed = observe_assets(fresh)
            for cp_id, obs in observed.items():
                row = db.execute("SELECT doc FROM assets WHERE charge_point_id = ?", [cp_id]).fetchone()
                doc = merge_asset(json.loads(row[0]) if row else None, obs, sites.get(cp_id))
                db.execute("INSERT INTO assets VALUES (?, ?) ON CONFLICT(charge_point_id) DO UPDATE SET "
                           "doc = excluded.doc", [cp_id, json.dumps(doc, sort_keys=True)])
            for cp_id, site in sites.items():
                db.execute("UPDATE assets SET doc = json_set(doc, '$.chargewatch.site', ?) WHERE charge_point_id = ?",
                           [site, cp_id])
                db.execute("UPDATE alerts SET site = ? WHERE charge_point_id = ?", [site, cp_id])
        return len(fresh)

    def _archive(self, db: sqlite3.Connection, records: Sequence[Record]) -> list[Record]:
        """Insert the records the archive does not hold yet; returns them, in input order."""
        by_id: dict[str, Record] = {}
        for record in records:
            by_id.setdefault(record_id(record), record)
        ids = list(by_id)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id FROM messages WHERE id IN ({marks})"  # noqa: S608 - placeholders only
            for (known,) in db.execute(sql, chunk):
                del by_id[known]
        fresh = list(by_id.items())
        db.executemany("INSERT INTO messages (id, ts, charge_point_id, connection_id, doc) VALUES (?, ?, ?, ?, ?)",
                       [(rid, r.ts, r.charge_point_id or None, r.connection_id,
                         _dumps(record_document(r, rid))) for rid, r in fresh])
        return [r for _, r in fresh]

    def messages(self, query: MessageQuery) -> list[dict[str, Any]]:
        conditions: list[str] = []
        args: list[Any] = []
        for column, op, value in (("charge_point_id", "=", query.charge_point_id), ("ts", ">=", query.since),
                                  ("ts", "<=", query.until), ("connection_id", "=", query.connection_id)):
            if value is not None:
                conditions.append(f"{column} {op} ?")
                args.append(value)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        sql = f"SELECT doc FROM messages {where} ORDER BY ts, seq LIMIT ?"  # noqa: S608 - fixed clauses
        return [json.loads(row[0]) for row in self._read(sql, [*args, query.limit])]

    def assets(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE charge_point_id = ?", [charge_point_id]) if charge_point_id else ("", [])
        sql = f"SELECT doc FROM assets {where} ORDER BY charge_point_id"  # noqa: S608 - fixed clauses
        docs = [json.loads(row[0]) for row in self._read(sql, args)]
        counts = {row[0]: row[1:] for row in self._read(
            "SELECT a.charge_point_id, COUNT(*), SUM(COALESCE(t.status, 'new') != 'closed'), MAX(a.severity), "
            "MAX(a.ts) FROM alerts a LEFT JOIN triage t ON t.alert_id = a.id WHERE a.kind = 'alert' "
            "GROUP BY a.charge_point_id")}
        for doc in docs:
            total, open_, worst, last = counts.get(doc["ocpp"]["charge_point_id"], (0, 0, None, None))
            alerts = {"total": total, "open": open_, "max_severity": worst,
                      "last": iso_time(last) if last is not None else None}
            doc.setdefault("chargewatch", {})["alerts"] = {k: v for k, v in alerts.items() if v is not None}
        return docs

    # --- charging sessions -----------------------------------------------------------------------

    def put_sessions(self, sessions: Sequence[Mapping[str, Any]]) -> int:
        """Store charging sessions with their scores (a session written again replaces its row);
        returns how many were written."""
        rows = [(session_id(str(s["charge_point_id"]), str(s["transaction_id"])), float(s["start"]),
                 str(s["charge_point_id"]), _dumps(session_document(s))) for s in sessions]
        with self._write() as db:
            db.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET ts = excluded.ts, "
                           "charge_point_id = excluded.charge_point_id, doc = excluded.doc", rows)
        return len(rows)

    def transactions(self, charge_point_id: str | None = None, since: float | None = None,
                     until: float | None = None, limit: int = 1_000) -> list[dict[str, Any]]:
        """Session documents, newest start first (the dashboard's transactions page)."""
        conditions: list[str] = []
        args: list[Any] = []
        for column, op, value in (("charge_point_id", "=", charge_point_id), ("ts", ">=", since),
                                  ("ts", "<=", until)):
            if value is not None:
                conditions.append(f"{column} {op} ?")
                args.append(value)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        sql = f"SELECT doc FROM sessions {where} ORDER BY ts DESC, id LIMIT ?"  # noqa: S608 - fixed clauses
        return [json.loads(row[0]) for row in self._read(sql, [*args, limit])]

    def refresh(self) -> None:
        """Nothing to do: a committed SQLite write is visible to every later read."""

    # --- where the captures are -------------------------------------------------------------------

    def remember_capture(self, path: Path) -> None:
        """Note where a capture file analysed into this store lives (records name it by file name
        only), so an evidence export can find its packets later."""
        stat = path.stat()
        with self._write() as db:
            db.execute("INSERT INTO captures VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET path = excluded.path, "
                       "size = excluded.size, mtime = excluded.mtime",
                       [path.name, str(path.resolve()), stat.st_size, stat.st_mtime])

    def capture_location(self, name: str) -> Path | None:
        """Where the capture called name was when it was analysed into this store (None: unknown)."""
        rows = self._read("SELECT path FROM captures WHERE name = ?", [name])
        return Path(rows[0][0]) if rows else None

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _sites(db: sqlite3.Connection, cp_ids: set[str]) -> dict[str, str]:
        """The site the asset inventory holds for each of cp_ids (those that have one)."""
        found: dict[str, str] = {}
        ids = sorted(cp_ids)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            column = "json_extract(doc, '$.chargewatch.site')"
            sql = f"SELECT charge_point_id, {column} FROM assets WHERE charge_point_id IN ({marks})"  # noqa: S608
            for cp_id, site in db.execute(sql, chunk):
                if site:
                    found[cp_id] = site
        return found


def _dumps(doc: dict[str, Any]) -> str:
    """JSON text of a document: orjson (several times faster, the archive's hot path), else the
    standard library for what orjson refuses (integers beyond 64 bits in a hostile payload)."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(doc, sort_keys=True)


def _alert_filters(query: AlertQuery) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    args: list[Any] = []
    for column, op, value in (("a.ts", ">=", query.since), ("a.ts", "<=", query.until),
                              ("a.charge_point_id", "=", query.charge_point_id), ("a.category", "=", query.category),
                              ("a.severity", ">=", query.min_severity), ("a.rule_id", "=", query.rule_id),
                              ("a.site", "=", query.site)):
        if value is not None:
            conditions.append(f"{column} {op} ?")
            args.append(value)
    if query.triage_status is not None:
        conditions.append("COALESCE(t.status, 'new') = ?")
        args.append(query.triage_status)
    return ("WHERE " + " AND ".join(conditions)) if conditions else "", args


def _alert_document(row: tuple[Any, ...]) -> dict[str, Any]:
    """The stored alert document with its site and triage joined in (both only when set)."""
    doc: dict[str, Any] = json.loads(row[0])
    site, status, note, user, updated = row[1:]
    if site:
        doc["chargewatch"]["site"] = site
    if status is not None:
        doc["triage"] = {"status": status, "note": note, "updated_by": user, "updated_at": iso_time(updated)}
    return doc

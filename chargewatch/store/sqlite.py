"""The embedded store: alerts in a SQLite file, for running without Elasticsearch."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chargewatch.alerts import Alert
from chargewatch.errors import StoreError
from chargewatch.store import AlertQuery

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
"""


class SqliteAlertStore:
    """Alert store in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open SQLite store: {exc}") from exc

    def setup(self) -> str:
        self.db.executescript(SCHEMA)
        return f"SQLite store ready at {self.path}"

    def put_alerts(self, alerts: Sequence[Alert]) -> int:
        rows = [(a.id, a.ts, a.rule_id, a.category, a.severity, a.charge_point_id,
                 json.dumps(a.to_document(), sort_keys=True)) for a in alerts]
        with self.db:
            self.db.executemany(
                "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                rows)
        return len(rows)

    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        clauses, args = _where(query)
        sql = f"SELECT doc FROM alerts {clauses} ORDER BY ts DESC, id LIMIT ?"  # noqa: S608 - fixed clauses
        return [json.loads(row[0]) for row in self.db.execute(sql, [*args, query.limit])]

    def close(self) -> None:
        self.db.close()


def _where(query: AlertQuery) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    args: list[Any] = []
    for column, op, value in (("ts", ">=", query.since), ("charge_point_id", "=", query.charge_point_id),
                              ("category", "=", query.category), ("severity", ">=", query.min_severity),
                              ("rule_id", "=", query.rule_id)):
        if value is not None:
            conditions.append(f"{column} {op} ?")
            args.append(value)
    return ("WHERE " + " AND ".join(conditions)) if conditions else "", args

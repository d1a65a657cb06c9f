"""Alert stores behind one interface: Elasticsearch for deployments, SQLite for the
embedded default. Both are idempotent by alert id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chargewatch.alerts import Alert


@dataclass(frozen=True)
class AlertQuery:
    """Filters for listing alerts (all optional)."""

    since: float | None = None
    charge_point_id: str | None = None
    category: str | None = None
    min_severity: int | None = None
    rule_id: str | None = None
    limit: int = 1000


class AlertStore(Protocol):
    """Where alerts are kept for the SOC surfaces."""

    def setup(self) -> str:
        """Create indices/tables (idempotent); returns a sentence saying what was done."""
        ...

    def put_alerts(self, alerts: Sequence[Alert]) -> int:
        """Store alerts durably, upserting by id: a stored alert gets the new pipeline fields
        (a storm's count and last occurrence) and keeps what people added (``triage``).
        Returns how many alerts were written."""
        ...

    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        """Alert documents matching query, newest first."""
        ...

    def close(self) -> None: ...

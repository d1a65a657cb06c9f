"""Where the SOC surfaces read from: one interface, two implementations.

:class:`~chargewatch.store.elastic.ElasticAlertStore` (deployments: the alerts index, the
message archive and the asset inventory described in :mod:`chargewatch.schema`) and
:class:`~chargewatch.store.sqlite.SqliteAlertStore` (the embedded default: one SQLite file).
Both are idempotent: alerts by their deterministic id, archived records by their identity
(:func:`chargewatch.resume.identity`), assets by charge point id. Both return documents in
the Elasticsearch shape (:mod:`chargewatch.schema` field names), so the responder CLI, the
built-in dashboard and exports work the same on either.

Triage (``triage.status`` new/acknowledged/closed, ``triage.note``, ``triage.updated_by``,
``triage.updated_at``) is set only by people, through :meth:`Store.set_triage`; writing alerts
never overwrites it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chargewatch.alerts import Alert
from chargewatch.model import Record

TRIAGE_STATES = ("new", "acknowledged", "closed")


@dataclass(frozen=True)
class AlertQuery:
    """Filters for listing alerts (all optional; times are epoch seconds)."""

    since: float | None = None
    until: float | None = None
    charge_point_id: str | None = None
    category: str | None = None
    min_severity: int | None = None
    rule_id: str | None = None
    site: str | None = None
    triage_status: str | None = None  # "new" also matches alerts nobody triaged yet
    limit: int = 1000


@dataclass(frozen=True)
class MessageQuery:
    """Filters for archived records (OCPP messages and connection events), oldest first."""

    charge_point_id: str | None = None
    since: float | None = None
    until: float | None = None
    connection_id: str | None = None
    limit: int = 10_000


class AlertStore(Protocol):
    """Alerts for the SOC surfaces (what the indexer stage needs)."""

    def setup(self) -> str:
        """Create indices/tables, templates and retention (idempotent); returns sentences saying
        what was done, including which retention mechanism is in force."""
        ...

    def put_alerts(self, alerts: Sequence[Alert], sites: dict[str, str] | None = None) -> int:
        """Store alerts durably, upserting by id: a stored alert gets the new pipeline fields
        (a storm's count and last occurrence) and keeps what people added (``triage``); sites
        (charge point id -> site, from the operator policy) fills ``chargewatch.site``.
        Returns how many alerts were written."""
        ...

    def search(self, query: AlertQuery) -> list[dict[str, Any]]:
        """Alert documents matching query, newest first."""
        ...

    def close(self) -> None: ...


class Store(AlertStore, Protocol):
    """Everything the responder CLI, the dashboard and exports read and write."""

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        """One alert document by id (None when unknown)."""
        ...

    def set_triage(self, alert_id: str, status: str, note: str, user: str) -> dict[str, Any]:
        """Set an alert's triage state (one of TRIAGE_STATES) with a note; returns the updated
        document. Raises StoreError for an unknown alert or state."""
        ...

    def put_records(self, records: Sequence[Record], sites: dict[str, str] | None = None) -> int:
        """Archive records (idempotent by record identity) and update the asset inventory from
        them (BootNotification details, versions, security posture, addresses, first/last
        seen); sites maps charge point ids to their site (operator policy)."""
        ...

    def messages(self, query: MessageQuery) -> list[dict[str, Any]]:
        """Archived record documents (MESSAGE_FIELDS shape) matching query, oldest first."""
        ...

    def assets(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        """Asset documents (ASSET_FIELDS shape), one per charge point, with open-alert counts."""
        ...

    def refresh(self) -> None:
        """Make everything written so far visible to searches (a no-op where writes are)."""
        ...

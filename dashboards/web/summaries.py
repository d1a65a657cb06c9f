"""What the overview shows, computed from the alert documents a store returned.

The store protocol lists documents (newest first, at most ``max_alerts``); counts, top lists
and the charts are folded here, so they work the same on Elasticsearch and SQLite. When the
limit was reached the page says so: the figures then cover the newest alerts only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chargewatch.alerts import CATEGORIES, SEVERITY_NAMES
from chargewatch.store.documents import get_field
from dashboards.web.charts import Chart, stacked_bars

TOP = 10
LATEST = 25
CATEGORY_LABELS = {"mitm": "man in the middle", "replay": "replay", "unauthorized_command": "unauthorized command",
                   "abnormal_transaction": "abnormal transaction", "security_event": "security event",
                   "protocol_anomaly": "protocol anomaly"}


@dataclass(frozen=True)
class Ranked:
    """One row of a top list."""

    key: str
    label: str
    count: int
    worst: int  # highest severity among its alerts
    extra: str = ""  # the rule's category, the charge point's site


@dataclass(frozen=True)
class Overview:
    """Figures of the overview page."""

    total: int
    alerts: int
    events: int
    open: int
    by_severity: list[tuple[int, str, int]]
    by_category: Chart
    by_severity_chart: Chart
    top_charge_points: list[Ranked]
    top_rules: list[Ranked]
    latest: list[dict[str, Any]]
    truncated: bool


def epoch(text: Any) -> float | None:
    """Epoch seconds of an RFC 3339 time from a document (None when absent or unreadable)."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def severity_of(doc: dict[str, Any]) -> int:
    value = get_field(doc, "event.severity")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def triage_status(doc: dict[str, Any]) -> str:
    """The alert's triage status; alerts nobody triaged are "new"."""
    status = get_field(doc, "triage.status")
    return status if isinstance(status, str) and status else "new"


def overview(docs: Sequence[dict[str, Any]], limit: int, start: float | None, end: float | None) -> Overview:
    """Counts, top lists, charts and the latest alerts of docs (newest first). Recorded events
    (``event.kind`` "event": facts such as an expected reboot) are listed among the latest but
    not counted: the figures are about alerts someone has to act on."""
    alerts = [doc for doc in docs if get_field(doc, "event.kind") != "event"]
    stamped = [(ts, doc) for doc in alerts if (ts := epoch(doc.get("@timestamp"))) is not None]
    severities = Counter(severity_of(doc) for doc in alerts)
    category_keys = [(c, CATEGORY_LABELS.get(c, c), f"cat-{c}") for c in CATEGORIES]
    severity_keys = [(str(level), name, f"sev-{level}") for level, name in sorted(SEVERITY_NAMES.items())]
    return Overview(
        total=len(docs), alerts=len(alerts), events=len(docs) - len(alerts),
        open=sum(1 for doc in alerts if triage_status(doc) != "closed"),
        by_severity=[(level, name, severities.get(level, 0)) for level, name in sorted(SEVERITY_NAMES.items(),
                                                                                       reverse=True)],
        by_category=stacked_bars([(ts, str(get_field(d, "rule.category"))) for ts, d in stamped], category_keys,
                                 start, end),
        by_severity_chart=stacked_bars([(ts, str(severity_of(d))) for ts, d in stamped], severity_keys, start, end),
        top_charge_points=rank(alerts, "ocpp.charge_point_id", extra="chargewatch.site"),
        top_rules=rank(alerts, "rule.id", label="rule.name", extra="rule.category"),
        latest=list(docs[:LATEST]), truncated=len(docs) >= limit)


def rank(docs: Sequence[dict[str, Any]], key: str, *, label: str | None = None, extra: str | None = None,
         top: int = TOP) -> list[Ranked]:
    """The most frequent values of field key among docs, with their worst severity."""
    counts: Counter[str] = Counter()
    worst: dict[str, int] = {}
    labels: dict[str, str] = {}
    extras: dict[str, str] = {}
    for doc in docs:
        value = get_field(doc, key)
        if not isinstance(value, str) or not value:
            continue
        counts[value] += 1
        worst[value] = max(worst.get(value, 0), severity_of(doc))
        labels.setdefault(value, str(get_field(doc, label) or "") if label else "")
        extras.setdefault(value, str(get_field(doc, extra) or "") if extra else "")
    ordered = sorted(counts.items(), key=lambda item: (-item[1], -worst[item[0]], item[0]))[:top]
    return [Ranked(value, labels[value], n, worst[value], extras[value]) for value, n in ordered]

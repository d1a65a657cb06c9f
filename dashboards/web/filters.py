"""The filters every view takes from its query string, so any view is a link one can share.

``range`` (1h, 24h, 7d, 30d, all) or ``from``/``to`` (UTC, ``YYYY-MM-DD`` or
``YYYY-MM-DDTHH:MM[:SS]``), ``site``, ``cp`` (charge point id), ``category``, ``severity`` (the
lowest severity shown: low, medium, high, critical) and ``rule``. A value that makes no sense is
reported to the user (:class:`FilterError`), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from chargewatch.alerts import CATEGORIES, SEVERITY_NAMES
from chargewatch.errors import ChargewatchError
from chargewatch.store import AlertQuery, MessageQuery
from dashboards.web.settings import RANGES

SEVERITY_BY_NAME = {name: level for level, name in SEVERITY_NAMES.items()}
MAX_TEXT = 200


class FilterError(ChargewatchError):
    """A filter in the query string has a value the dashboard cannot use (says which and why)."""


@dataclass(frozen=True)
class Filters:
    """One view's filters; ``since``/``until`` are epoch seconds (None: open)."""

    range: str = "24h"  # a key of RANGES, or "custom" when from/to are given
    since: float | None = None
    until: float | None = None
    site: str | None = None
    cp: str | None = None
    category: str | None = None
    severity: int | None = None
    rule: str | None = None

    def alert_query(self, limit: int, *, cp: str | None = None) -> AlertQuery:
        """The store query of these filters (cp, when given, replaces the charge point filter)."""
        return AlertQuery(since=self.since, until=self.until, charge_point_id=cp or self.cp, category=self.category,
                          min_severity=self.severity, rule_id=self.rule, site=self.site, limit=limit)

    def message_query(self, limit: int, cp: str | None) -> MessageQuery:
        """Archive query over the same time range for one charge point (None: all)."""
        return MessageQuery(charge_point_id=cp, since=self.since, until=self.until, limit=limit)

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES.get(self.severity or 0, "")

    def params(self, **changes: str | None) -> dict[str, Any]:
        """Query-string parameters of these filters, with some replaced (None/"" removes one)."""
        out: dict[str, Any] = {}
        if self.range == "custom":
            if self.since is not None:
                out["from"] = _format_time(self.since)
            if self.until is not None:
                out["to"] = _format_time(self.until)
        else:
            out["range"] = self.range
        for key, value in (("site", self.site), ("cp", self.cp), ("category", self.category),
                           ("severity", self.severity_name or None), ("rule", self.rule)):
            if value:
                out[key] = value
        for key, value in changes.items():
            if value:
                out[key] = value
            else:
                out.pop(key, None)
        return out

    def without(self, *names: str) -> Filters:
        """The same filters with some cleared (e.g. the charge point on a drill-down's links)."""
        cleared: dict[str, Any] = dict.fromkeys(names)
        return replace(self, **cleared)


def parse_filters(args: Mapping[str, str], default_range: str, now: float) -> Filters:
    """Filters from a query string; relative ranges end at now."""
    site, cp, category, rule = (_text(args, key) for key in ("site", "cp", "category", "rule"))
    if category is not None and category not in CATEGORIES:
        raise FilterError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    severity = _text(args, "severity")
    level = None
    if severity is not None:
        level = SEVERITY_BY_NAME.get(severity.lower())
        if level is None:
            raise FilterError(f"unknown severity {severity!r}; known: {', '.join(SEVERITY_BY_NAME)}")
    since, until = _parse_time(args, "from"), _parse_time(args, "to")
    if since is not None or until is not None:
        if since is not None and until is not None and until <= since:
            raise FilterError("the end of the time range ('to') must come after its start ('from')")
        span = "custom"
    else:
        span = _text(args, "range") or default_range
        if span == "custom":  # "from ... to ..." chosen but neither filled in: no bound at all
            span = "all"
        if span not in RANGES:
            raise FilterError(f"unknown time range {span!r}; known: {', '.join(RANGES)}")
        seconds = RANGES[span]
        since = None if seconds is None else now - seconds
    return Filters(range=span, since=since, until=until, site=site, cp=cp, category=category, severity=level,
                   rule=rule)


def _text(args: Mapping[str, str], key: str) -> str | None:
    value = (args.get(key) or "").strip()
    if len(value) > MAX_TEXT:
        raise FilterError(f"the {key} filter is longer than {MAX_TEXT} characters")
    return value or None


def _parse_time(args: Mapping[str, str], key: str) -> float | None:
    text = _text(args, key)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"'{key}' must be a UTC date or time like 2026-11-25 or 2026-11-25T14:30, "
                          f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _format_time(ts: float) -> str:
    """UTC in the form an HTML datetime-local input shows (seconds only when needed)."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S" if moment.second or moment.microsecond else "%Y-%m-%dT%H:%M")

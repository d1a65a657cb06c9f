"""Helpers every view shares: its filters, the choices the filter bar offers, which charge
points a site holds, and rendering with the common page context."""

from __future__ import annotations

from typing import Any

from flask import render_template, request
from flask.typing import ResponseReturnValue

from chargewatch.alerts import CATEGORIES, SEVERITY_NAMES
from chargewatch.store.documents import get_field
from dashboards.web.auth import current_user
from dashboards.web.context import dashboard_state
from dashboards.web.filters import Filters, parse_filters
from dashboards.web.settings import RANGES
from dashboards.web.summaries import CATEGORY_LABELS


def request_filters() -> Filters:
    """The current request's filters (FilterError for a value that makes no sense)."""
    settings = dashboard_state().settings
    return parse_filters(request.args, settings.default_range, settings.clock())


def assets() -> list[dict[str, Any]]:
    """Every asset document (one per charge point)."""
    return dashboard_state().store.assets()


def site_members(inventory: list[dict[str, Any]], site: str) -> list[str]:
    """Charge points the asset inventory places at site."""
    return sorted(str(get_field(a, "ocpp.charge_point_id")) for a in inventory
                  if get_field(a, "chargewatch.site") == site)


def render(template: str, view: str, filters: Filters | None, inventory: list[dict[str, Any]] | None = None,
           status: int = 200, **values: Any) -> ResponseReturnValue:
    """A page with the common context: user, store, navigation and the filter bar's choices."""
    inventory = assets() if inventory is None and filters is not None else (inventory or [])
    sites = sorted({str(s) for a in inventory if (s := get_field(a, "chargewatch.site"))})
    charge_points = sorted(str(get_field(a, "ocpp.charge_point_id")) for a in inventory)
    body = render_template(template, view=view, filters=filters, user=current_user(),
                           store_label=dashboard_state().settings.store_label,
                           choices={"ranges": list(RANGES), "sites": sites, "charge_points": charge_points,
                                    "categories": [(c, CATEGORY_LABELS.get(c, c)) for c in CATEGORIES],
                                    "severities": [(name, level) for level, name in sorted(SEVERITY_NAMES.items())]},
                           **values)
    return body, status

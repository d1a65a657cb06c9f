"""The dashboard's pages: the overview, the charge point list and drill-down with its timeline,
the remote-command audit, transactions, and the alert detail page with triage.

Views only read the request, ask the store (through :mod:`dashboards.web.context`) and hand
documents to :mod:`dashboards.web.summaries` and :mod:`dashboards.web.activity`; what a page
draws lives in its template.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from chargewatch.catalog import load_catalog
from chargewatch.store import TRIAGE_STATES, AlertQuery, MessageQuery
from chargewatch.store.documents import get_field
from dashboards.web import activity
from dashboards.web.auth import current_user
from dashboards.web.charts import scatter
from dashboards.web.context import dashboard_state
from dashboards.web.filters import FilterError, Filters
from dashboards.web.pages import assets, render, request_filters, site_members
from dashboards.web.summaries import epoch, severity_of
from dashboards.web.summaries import overview as summarize

bp = Blueprint("views", __name__)

MAX_NOTE = 4000
TIMELINE_WINDOWS = {"1m": 60.0, "5m": 300.0, "10m": 600.0, "30m": 1800.0, "1h": 3600.0, "6h": 21_600.0}
SECURITY_PROFILES = {0: "0: plain ws://, no authentication", 1: "1: Basic authentication over plain ws://",
                     2: "2: TLS with Basic authentication", 3: "3: TLS with client certificate"}


@bp.route("/")
def overview() -> ResponseReturnValue:
    """Alerts over time by category and severity, top charge points and rules, latest alerts."""
    filters = request_filters()
    state = dashboard_state()
    docs = state.store.search(filters.alert_query(state.settings.max_alerts))
    end = filters.until if filters.until is not None else (state.settings.clock() if filters.since else None)
    newest = None
    if not docs and filters.range != "all":  # the empty state offers the time of the newest alert
        found = state.store.search(AlertQuery(limit=1))
        newest = found[0] if found else None
    return render("overview.html", "overview", filters, summary=summarize(docs, state.settings.max_alerts,
                                                                           filters.since, end), newest=newest)


@bp.route("/cp/")
def charge_points() -> ResponseReturnValue:
    """The asset inventory: every charge point with its posture and alert counts."""
    filters = request_filters()
    if filters.cp:
        return redirect(url_for("views.charge_point", cp_id=filters.cp, **filters.params(cp=None)))
    inventory = assets()
    shown = [a for a in inventory if not filters.site or get_field(a, "chargewatch.site") == filters.site]
    return render("charge_points.html", "charge_points", filters, inventory, rows=shown, profiles=SECURITY_PROFILES)


@bp.route("/cp/<path:cp_id>")
def charge_point(cp_id: str) -> ResponseReturnValue:
    """One charge point: its alerts, sessions, the commands it received and its posture."""
    filters = request_filters()
    if "cp" in request.args and filters.cp != cp_id:  # the filter bar named another charge point
        if not filters.cp:
            return redirect(url_for("views.overview", **filters.params()))
        return redirect(url_for("views.charge_point", cp_id=filters.cp, **filters.params(cp=None)))
    state = dashboard_state()
    local = replace(filters, cp=cp_id, site=None)
    alerts = state.store.search(local.alert_query(state.settings.max_alerts))
    messages = state.store.messages(local.message_query(state.settings.max_messages, cp_id))
    asset = next(iter(state.store.assets(cp_id)), None)
    if asset is None and not alerts and not messages:
        abort(404, description=f"No charge point {cp_id!r} in this store.")
    every_alert = state.store.search(local.without("category", "severity", "rule")
                                     .alert_query(state.settings.max_alerts))
    received = activity.commands(messages, every_alert, load_catalog(), None)
    return render("charge_point.html", "charge_points", filters.without("cp"), cp_id=cp_id, asset=asset,
                  alerts=alerts, commands=received,
                  sessions=activity.sessions(messages), profiles=SECURITY_PROFILES,
                  truncated=len(messages) >= state.settings.max_messages)


@bp.route("/timeline/<path:cp_id>")
def timeline(cp_id: str) -> ResponseReturnValue:
    """A charge point's messages and alerts in order, around an alert or over the time range."""
    state = dashboard_state()
    shown = request_filters().without("cp")  # the filter bar and the links to other views keep these
    span = replace(shown, cp=cp_id)
    around = None
    window = request.args.get("window", "10m")
    if window not in TIMELINE_WINDOWS:
        raise FilterError(f"unknown window {window!r}; known: {', '.join(TIMELINE_WINDOWS)}")
    if request.args.get("around"):
        around = state.store.get_alert(request.args["around"])
        if around is None:
            abort(404, description=f"No alert {request.args['around']!r} in this store.")
        moment = epoch(around.get("@timestamp")) or 0.0
        span = Filters(range="custom", since=moment - TIMELINE_WINDOWS[window],
                       until=moment + TIMELINE_WINDOWS[window], cp=cp_id)
    messages = state.store.messages(MessageQuery(charge_point_id=cp_id, since=span.since, until=span.until,
                                                 limit=state.settings.max_messages))
    alerts = state.store.search(span.without("category", "severity", "rule", "site")
                                .alert_query(state.settings.max_alerts))
    return render("timeline.html", "charge_points", shown, cp_id=cp_id, around=around, window=window,
                  windows=list(TIMELINE_WINDOWS), rows=activity.timeline(messages, alerts, around),
                  truncated=len(messages) >= state.settings.max_messages)


@bp.route("/commands")
def commands() -> ResponseReturnValue:
    """Every sensitive central-system command (or every command): who sent it, its outcome."""
    filters = request_filters()
    state = dashboard_state()
    inventory = assets()
    messages, truncated = _archive(filters, inventory)
    alerts = state.store.search(filters.without("category", "severity", "rule").alert_query(state.settings.max_alerts))
    every = request.args.get("all") == "1"
    rows = activity.commands(messages, alerts, load_catalog(), None if every else state.sensitive_actions)
    if filters.category or filters.severity or filters.rule:
        wanted = {a_id for a_id in (str(get_field(a, "event.id")) for a in state.store.search(
            filters.alert_query(state.settings.max_alerts)))}
        rows = [r for r in rows if any(alert_id in wanted for alert_id, _, _ in r.alerts)]
    return render("commands.html", "commands", filters, inventory, commands=rows, every=every, truncated=truncated)


@bp.route("/transactions")
def transactions() -> ResponseReturnValue:
    """Charging sessions: scored transaction documents when the store has them, else the
    sessions the message archive shows (without anomaly scores)."""
    filters = request_filters()
    state = dashboard_state()
    inventory = assets()
    scored = _scored_transactions(filters, inventory)
    sessions: list[activity.Session] = []
    truncated = False
    if scored is None:
        messages, truncated = _archive(filters, inventory)
        sessions = activity.sessions(messages)
        if filters.category or filters.severity or filters.rule:
            alerts = state.store.search(filters.alert_query(state.settings.max_alerts))
            sessions = [s for s in sessions if _alert_during(alerts, s.charge_point_id, s.start, s.end)]
    points = [(s.duration_s / 60, s.energy_wh / 1000, "pt-session", f"{s.charge_point_id} {s.transaction_id}")
              for s in sessions if s.duration_s is not None and s.energy_wh is not None]
    for doc in scored or []:
        seconds, wh = get_field(doc, "chargewatch.session.duration_s"), get_field(doc, "chargewatch.session.energy_wh")
        if isinstance(seconds, int | float) and isinstance(wh, int | float):
            css = "pt-anomaly" if get_field(doc, "chargewatch.anomaly.is_anomaly") else "pt-session"
            points.append((seconds / 60, wh / 1000, css, f"{get_field(doc, 'ocpp.charge_point_id')} "
                                                        f"{get_field(doc, 'ocpp.transaction_id')}"))
    return render("transactions.html", "transactions", filters, inventory, scored=scored, sessions=sessions,
                  scatter_chart=scatter(points, "duration (min)", "energy (kWh)"), truncated=truncated)


def _archive(filters: Filters, inventory: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """Archived records in the filters' time range, of the charge point, the site's charge
    points, or all; and whether the per-query limit cut them."""
    state = dashboard_state()
    limit = state.settings.max_messages
    if filters.cp:
        scope: list[str | None] = [filters.cp]
    elif filters.site:
        scope = list(site_members(inventory, filters.site))
    else:
        scope = [None]
    found: list[dict[str, Any]] = []
    truncated = False
    for cp in scope:
        batch = state.store.messages(filters.message_query(limit, cp))
        truncated |= len(batch) >= limit
        found.extend(batch)
    if len(scope) > 1:
        found.sort(key=lambda doc: str(doc.get("@timestamp", "")))
    return found, truncated


def _scored_transactions(filters: Filters, inventory: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Transaction documents (TRANSACTION_FIELDS) from a store that keeps them, else None."""
    source = getattr(dashboard_state().store, "transactions", None)
    if not callable(source):
        return None
    docs: list[dict[str, Any]] = source(charge_point_id=filters.cp, since=filters.since, until=filters.until,
                                        limit=dashboard_state().settings.max_alerts)
    if filters.site:
        members = set(site_members(inventory, filters.site))
        docs = [d for d in docs if get_field(d, "ocpp.charge_point_id") in members]
    return docs


def _alert_during(alerts: list[dict[str, Any]], cp: str, start: str, end: str) -> bool:
    """True when one of alerts was raised on cp between start and end (RFC 3339 times)."""
    first, last = epoch(start), epoch(end)
    if first is None or last is None:
        return False
    return any(get_field(a, "ocpp.charge_point_id") == cp and first - 0.001 <= (epoch(a.get("@timestamp")) or 0.0)
               <= last + 0.001 for a in alerts)


@bp.route("/alerts/<alert_id>")
def alert(alert_id: str) -> ResponseReturnValue:
    """One alert: every field, its evidence, the rule's triage guidance, and the triage form."""
    state = dashboard_state()
    doc = state.store.get_alert(alert_id)
    if doc is None:
        abort(404, description=f"No alert {alert_id!r} in this store.")
    rule = state.rules.get(str(get_field(doc, "rule.id")))
    return render("alert.html", "overview", None, alert=doc, rule=rule, states=TRIAGE_STATES,
                  severity=severity_of(doc), max_note=MAX_NOTE)


@bp.route("/alerts/<alert_id>/triage", methods=["POST"])
def triage(alert_id: str) -> ResponseReturnValue:
    """Save the triage status and note with the logged-in user's name, then show the alert."""
    status = request.form.get("status", "")
    note = request.form.get("note", "").strip()
    if status not in TRIAGE_STATES:
        abort(400, description=f"Unknown triage status {status!r}; one of {', '.join(TRIAGE_STATES)}.")
    if len(note) > MAX_NOTE:
        abort(400, description=f"The note is longer than {MAX_NOTE} characters.")
    user = current_user()
    assert user is not None  # the login guard runs first
    dashboard_state().store.set_triage(alert_id, status, note, user)
    flash(f"Triage saved: {status}.")
    return redirect(url_for("views.alert", alert_id=alert_id))

"""The data views and the SOC overview and charge-point drill-down dashboards.

Index names come from the deployment's ``[elasticsearch]`` settings through
:class:`chargewatch.store.es_templates.IndexNames` (the alerts index, ``<prefix>-messages-*``,
``<prefix>-assets``); the transactions index of the models issue is ``<prefix>-transactions``.
Object ids start with the prefix too, so two deployments can share one Kibana space.
"""

from __future__ import annotations

from dataclasses import dataclass

from chargewatch.alerts import SEVERITY_NAMES
from chargewatch.config import ElasticsearchConfig
from chargewatch.model import Direction, MessageType
from chargewatch.schema import ALERT_FIELDS, ASSET_FIELDS, MESSAGE_FIELDS, TRANSACTION_FIELDS
from chargewatch.store.es_templates import IndexNames
from dashboards.kibana.objects import (
    Control,
    DataView,
    Json,
    Panel,
    big_number,
    count,
    dashboard,
    date_histogram,
    kql_all,
    kql_any,
    kql_is,
    lens,
    metric,
    saved_search,
    table,
    terms,
    xy,
)

HIGH = next(level for level, name in SEVERITY_NAMES.items() if name == "high")
CALL = MessageType.CALL.name
CSMS_TO_CP = Direction.CSMS_TO_CP.value
# The alerts index also keeps recorded events (event.kind "event", e.g. CW-SEC-005): counted apart.
ALERTS_ONLY = kql_is("event.kind", "alert")
MESSAGES_ONLY = kql_is("event.dataset", "chargewatch.ocpp")
CONNECTIONS_ONLY = kql_is("event.dataset", "chargewatch.connection")
SESSION_ACTIONS = ("StartTransaction", "StopTransaction", "TransactionEvent")
# Archived records: newest first, and within one millisecond by capture time in microseconds.
ARCHIVE_ORDER = (("@timestamp", "desc"), ("event.sequence", "desc"))


@dataclass(frozen=True)
class Views:
    """The four data views of one deployment, and the prefix its object ids start with."""

    prefix: str
    alerts: DataView
    messages: DataView
    assets: DataView
    transactions: DataView

    def all(self) -> list[DataView]:
        return [self.alerts, self.messages, self.assets, self.transactions]

    def oid(self, name: str) -> str:
        return f"{self.prefix}-{name}"


def data_views(es: ElasticsearchConfig) -> Views:
    """Data views over the indices of one deployment. The asset inventory has no time field: a
    charge point's posture is shown whatever the dashboard's time range."""
    names = IndexNames.from_config(es)
    p = names.prefix
    return Views(
        prefix=p,
        alerts=DataView(f"{p}-dv-alerts", names.alerts, "Chargewatch alerts", "@timestamp", ALERT_FIELDS,
                        field_labels={"event.severity": "Severity (1 low - 4 critical)"}),
        messages=DataView(f"{p}-dv-messages", names.messages_pattern, "Chargewatch OCPP message archive",
                          "@timestamp", MESSAGE_FIELDS),
        assets=DataView(f"{p}-dv-assets", names.assets, "Chargewatch charge points (assets)", None, ASSET_FIELDS,
                        field_labels={"ocpp.security_profile": "Security profile (0-3)"}),
        transactions=DataView(
            f"{p}-dv-transactions", f"{p}-transactions", "Chargewatch charging sessions", "@timestamp",
            TRANSACTION_FIELDS,
            field_formats={"event.duration": {"id": "duration", "params": {
                "inputFormat": "nanoseconds", "outputFormat": "humanizePrecise", "outputPrecision": 1}}},
            field_labels={"chargewatch.session.energy_wh": "Energy (Wh)",
                          "chargewatch.anomaly.score": "Anomaly score (higher = more anomalous)"}),
    )


def alerts_over_time(v: Views, oid: str, title: str, split_field: str, split_label: str, size: int) -> Json:
    a = v.alerts
    kind, state = xy("bar_stacked", "time", ["count"], "split")
    return lens(a, v.oid(oid), title, f"Alerts per interval, stacked by {split_label}.", kind,
                {"split": terms(a, split_field, split_label, "count", size), "time": date_histogram(a),
                 "count": count("Alerts")}, state, ALERTS_ONLY)


def overview(v: Views) -> list[Json]:
    """(a) Alerts over time by category and severity, top charge points, rules and sites, and
    the latest critical and high alerts."""
    a = v.alerts
    serious = f"event.severity >= {HIGH}"
    numbers = [
        ("alert-count", "Alerts", count("Alerts")),
        ("alert-serious", "Critical and high alerts", count("Critical and high", serious)),
        ("alert-charge-points", "Charge points with alerts",
         metric(a, "unique_count", "ocpp.charge_point_id", "Charge points")),
        ("alert-open", "Open alerts (not closed by triage)", count("Open", f"not {kql_is('triage.status', 'closed')}")),
    ]
    kind, state = big_number("value")
    metrics = [lens(a, v.oid(oid), title, "", kind, {"value": column}, state, ALERTS_ONLY)
               for oid, title, column in numbers]
    top_cp_kind, top_cp_state = table(["cp", "count", "worst", "rules"], "count")
    top_cp = lens(a, v.oid("top-charge-points"), "Top charge points", "Charge points with the most alerts.",
                  top_cp_kind, {"cp": terms(a, "ocpp.charge_point_id", "Charge point", "count", 10, other=False),
                                "count": count("Alerts"),
                                "worst": metric(a, "max", "event.severity", "Highest severity"),
                                "rules": metric(a, "unique_count", "rule.id", "Rules")}, top_cp_state, ALERTS_ONLY)
    rules_kind, rules_state = table(["rule", "name", "count", "cps"], "count")
    top_rules = lens(a, v.oid("top-rules"), "Top rules", "Rules that fired most, and on how many charge points.",
                     rules_kind, {"rule": terms(a, "rule.id", "Rule", "count", 15, other=False),
                                  "name": terms(a, "rule.name", "Name", "count", 1, other=False),
                                  "count": count("Alerts"),
                                  "cps": metric(a, "unique_count", "ocpp.charge_point_id", "Charge points")},
                     rules_state, ALERTS_ONLY)
    site_kind, site_state = xy("bar_horizontal", "site", ["count"])
    by_site = lens(a, v.oid("alerts-by-site"), "Alerts by site", "Sites from the operator policy.", site_kind,
                   {"site": terms(a, "chargewatch.site", "Site", "count", 10), "count": count("Alerts")}, site_state,
                   ALERTS_ONLY)
    latest = saved_search(a, v.oid("latest-serious-alerts"), "Latest critical and high alerts",
                          "Newest first; open one in Discover for its evidence.",
                          ["ocpp.charge_point_id", "chargewatch.severity_name", "rule.id", "rule.name", "message",
                           "ocpp.action", "source.ip", "chargewatch.occurrences", "triage.status"],
                          kql_all(ALERTS_ONLY, serious))
    by_category = alerts_over_time(v, "alerts-by-category", "Alerts over time by category", "rule.category",
                                   "Category", 10)
    by_severity = alerts_over_time(v, "alerts-by-severity", "Alerts over time by severity",
                                   "chargewatch.severity_name", "Severity", 4)
    panels = [Panel(m, 12 * i, 0, 12, 6) for i, m in enumerate(metrics)] + [
        Panel(by_category, 0, 6, 24, 14), Panel(by_severity, 24, 6, 24, 14),
        Panel(top_cp, 0, 20, 18, 14), Panel(top_rules, 18, 20, 18, 14), Panel(by_site, 36, 20, 12, 14),
        Panel(latest, 0, 34, 48, 16),
    ]
    board = dashboard(v.oid("overview"), "[Chargewatch] Overview",
                      "Alerts of the whole fleet: volume by category and severity, the charge points, rules and "
                      "sites behind them, and the latest critical and high alerts. Refreshes every minute.",
                      panels, "now-24h", refresh_s=60)
    return [p.obj for p in panels] + [board]


def charge_point(v: Views) -> list[Json]:
    """(b) One charge point (the control at the top): posture, alerts, traffic, commands it
    received, connections and sessions."""
    a, m, s, t = v.alerts, v.messages, v.assets, v.transactions
    posture = saved_search(
        s, v.oid("cp-posture"), "Security posture",
        "Asset inventory: identity from BootNotification, negotiated OCPP version, observed security "
        "profile (0 plain, 1 Basic auth, 2 TLS, 3 mutual TLS), TLS parameters, addresses and alert counts.",
        ["ocpp.charge_point_id", "chargewatch.site", "device.manufacturer", "device.model.name",
         "device.serial_number", "ocpp.firmware_version", "ocpp.version", "ocpp.security_profile",
         "ocpp.auth_scheme", "tls.version", "tls.cipher", "source.ip", "chargewatch.first_seen",
         "chargewatch.last_seen", "chargewatch.alerts.open", "chargewatch.alerts.max_severity"],
        sort=[("chargewatch.last_seen", "desc")])
    alerts_kind, alerts_state = xy("bar_stacked", "time", ["count"], "split")
    alerts_chart = lens(a, v.oid("cp-alerts-by-rule"), "Its alerts over time by rule", "", alerts_kind,
                        {"split": terms(a, "rule.id", "Rule", "count", 10), "time": date_histogram(a),
                         "count": count("Alerts")}, alerts_state, ALERTS_ONLY)
    traffic_kind, traffic_state = xy("bar_stacked", "time", ["count"], "split")
    traffic = lens(m, v.oid("cp-traffic-by-action"), "Its OCPP messages over time by action",
                   "Every archived message (both directions).", traffic_kind,
                   {"split": terms(m, "ocpp.action", "Action", "count", 10), "time": date_histogram(m),
                    "count": count("Messages")}, traffic_state, MESSAGES_ONLY)
    its_alerts = saved_search(a, v.oid("cp-alerts"), "Its alerts and recorded events",
                              "event.kind tells an alert (to act on) from a recorded event (context).",
                              ["ocpp.charge_point_id", "event.kind", "chargewatch.severity_name", "rule.id",
                               "rule.name", "message", "ocpp.action", "chargewatch.occurrences", "event.end",
                               "triage.status"])
    commands = saved_search(m, v.oid("cp-commands"), "Commands it received",
                            "CALLs the central system sent to the charge point.",
                            ["ocpp.charge_point_id", "ocpp.action", "ocpp.message_id", "source.ip", "ocpp.version",
                             "event.reference"],
                            kql_all(kql_is("ocpp.direction", CSMS_TO_CP), kql_is("ocpp.message_type_name", CALL)),
                            ARCHIVE_ORDER)
    connections = saved_search(m, v.oid("cp-connections"), "Its connections",
                               "WebSocket upgrades and closes: subprotocol, authentication, TLS, addresses.",
                               ["ocpp.charge_point_id", "event.action", "ocpp.subprotocol", "ocpp.auth_scheme",
                                "ocpp.http_status", "tls.version", "tls.cipher", "source.ip", "destination.port"],
                               CONNECTIONS_ONLY, ARCHIVE_ORDER)
    sessions = saved_search(t, v.oid("cp-sessions"), "Its charging sessions",
                            "Sessions as the transaction models scored them.",
                            ["ocpp.charge_point_id", "ocpp.transaction_id", "ocpp.connector_id", "event.start",
                             "event.end", "chargewatch.session.energy_wh", "chargewatch.session.duration_s",
                             "ocpp.stop_reason", "ocpp.remote_start", "ocpp.id_token", "chargewatch.anomaly.score",
                             "chargewatch.anomaly.is_anomaly"])
    session_messages = saved_search(m, v.oid("cp-session-messages"), "Its transaction messages",
                                    "Start, stop and transaction events from the archive (idTokens are pseudonyms).",
                                    ["ocpp.charge_point_id", "ocpp.action", "ocpp.message_type_name",
                                     "ocpp.transaction_id", "ocpp.connector_id", "ocpp.id_token", "ocpp.status"],
                                    kql_any("ocpp.action", SESSION_ACTIONS), ARCHIVE_ORDER)
    panels = [
        Panel(posture, 0, 0, 48, 8),
        Panel(alerts_chart, 0, 8, 24, 12), Panel(traffic, 24, 8, 24, 12),
        Panel(its_alerts, 0, 20, 48, 14),
        Panel(commands, 0, 34, 24, 14), Panel(connections, 24, 34, 24, 14),
        Panel(sessions, 0, 48, 24, 14), Panel(session_messages, 24, 48, 24, 14),
    ]
    board = dashboard(v.oid("charge-point"), "[Chargewatch] Charge point",
                      "Pick a charge point in the control at the top (or query ocpp.charge_point_id): its "
                      "security posture, alerts, traffic, the commands it received, its connections and sessions.",
                      panels, "now-7d",
                      controls=[Control(f"{v.prefix}-control-cp", s, "ocpp.charge_point_id", "Charge point")])
    return [p.obj for p in panels] + [board]

"""The remote-command audit and transactions dashboards.

The audit's list of sensitive commands is the ``actions`` parameter of rule CW-CMD-002 (the
one list the detectors use), so the dashboard and the detection agree on what is sensitive.
A command's outcome is its answer in the archive: the CALLRESULT's ``ocpp.status`` or the
CALLERROR's ``ocpp.error_code``, paired with the CALL by ``ocpp.message_id``.
"""

from __future__ import annotations

from chargewatch.model import Direction, MessageType
from dashboards.kibana.objects import (
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
    vega,
    xy,
)
from dashboards.kibana.views import ARCHIVE_ORDER, Views
from detectors.rules import load_rules

SENSITIVE_RULE = "CW-CMD-002"
ANSWERS = (MessageType.CALLRESULT.name, MessageType.CALLERROR.name, MessageType.CALLRESULTERROR.name)
ERRORS = (MessageType.CALLERROR.name, MessageType.CALLRESULTERROR.name)
ANOMALOUS = "chargewatch.anomaly.is_anomaly:true"


def sensitive_actions() -> list[str]:
    """The central-system commands rule CW-CMD-002 treats as sensitive."""
    return [str(action) for action in load_rules()[SENSITIVE_RULE].param("actions")]


def command_queries() -> tuple[str, str, str]:
    """KQL of (sensitive actions, their CALLs from the central system, the charge points' answers)."""
    scope = kql_any("ocpp.action", sensitive_actions())
    calls = kql_all(kql_is("ocpp.direction", Direction.CSMS_TO_CP.value),
                    kql_is("ocpp.message_type_name", MessageType.CALL.name))
    answers = kql_all(kql_is("ocpp.direction", Direction.CP_TO_CSMS.value), kql_any("ocpp.message_type_name", ANSWERS))
    return scope, calls, answers


def command_audit(v: Views) -> list[Json]:
    """(c) Every sensitive command the central system sent: who sent it (``source.ip``) and
    what the charge point answered."""
    m, a = v.messages, v.alerts
    scope, calls, answers = command_queries()
    sent = kql_all(scope, calls)
    numbers = [
        ("audit-sent", "Sensitive commands sent", count("Commands"), sent),
        ("audit-rejected", "Answered Rejected", count("Rejected", kql_is("ocpp.status", "Rejected")),
         kql_all(scope, answers)),
        ("audit-errors", "Answered with an error", count("Errors", kql_any("ocpp.message_type_name", ERRORS)),
         kql_all(scope, answers)),
        ("audit-senders", "Senders", metric(m, "unique_count", "source.ip", "Addresses"), sent),
    ]
    kind, state = big_number("value")
    metrics = [lens(m, v.oid(oid), title, "", kind, {"value": column}, state, kql)
               for oid, title, column, kql in numbers]
    chart_kind, chart_state = xy("bar_stacked", "time", ["count"], "split")
    over_time = lens(m, v.oid("audit-over-time"), "Sensitive commands over time by action", "", chart_kind,
                     {"split": terms(m, "ocpp.action", "Command", "count", 10), "time": date_histogram(m),
                      "count": count("Commands")}, chart_state, sent)
    outcome_kind, outcome_state = table(["action", "status", "error", "count"], "count")
    outcomes = lens(m, v.oid("audit-outcomes"), "Outcomes by command",
                    "What the charge points answered: the answer's status, or the CALLERROR code.", outcome_kind,
                    {"action": terms(m, "ocpp.action", "Command", "count", 30, other=False),
                     "status": terms(m, "ocpp.status", "Status", "count", 10, other=False, missing=True),
                     "error": terms(m, "ocpp.error_code", "Error code", "count", 10, other=False, missing=True),
                     "count": count("Answers")}, outcome_state, kql_all(scope, answers))
    who_kind, who_state = table(["sender", "count", "cps", "actions"], "count")
    who = lens(m, v.oid("audit-senders-table"), "Who sends sensitive commands",
               "Source addresses of the commands: compare with the central systems of the operator policy.",
               who_kind, {"sender": terms(m, "source.ip", "Sender (source.ip)", "count", 20, other=False),
                          "count": count("Commands"),
                          "cps": metric(m, "unique_count", "ocpp.charge_point_id", "Charge points"),
                          "actions": metric(m, "unique_count", "ocpp.action", "Distinct commands")},
               who_state, sent)
    alerts = saved_search(a, v.oid("audit-alerts"), "Unauthorized-command alerts", "",
                          ["ocpp.charge_point_id", "chargewatch.severity_name", "rule.id", "rule.name", "message",
                           "ocpp.action", "source.ip"], kql_is("rule.category", "unauthorized_command"))
    trail = saved_search(m, v.oid("audit-trail"), "Every sensitive command and its answer",
                         "A command and its answer share ocpp.message_id; newest first.",
                         ["ocpp.charge_point_id", "ocpp.action", "ocpp.message_type_name", "ocpp.message_id",
                          "source.ip", "destination.ip", "ocpp.status", "ocpp.error_code", "ocpp.version",
                          "event.reference"],
                         kql_all(scope, f"({calls}) or ({answers})"), ARCHIVE_ORDER)
    panels = [Panel(x, 12 * i, 0, 12, 6) for i, x in enumerate(metrics)] + [
        Panel(over_time, 0, 6, 24, 14), Panel(outcomes, 24, 6, 24, 14),
        Panel(who, 0, 20, 24, 12), Panel(alerts, 24, 20, 24, 12),
        Panel(trail, 0, 32, 48, 18),
    ]
    board = dashboard(v.oid("command-audit"), "[Chargewatch] Remote-command audit",
                      "Sensitive central-system commands (the list of rule CW-CMD-002): who sent them, to which "
                      "charge point, and what the charge point answered.", panels, "now-7d")
    return [p.obj for p in panels] + [board]


def energy_vs_duration(v: Views) -> Json:
    """Scatter of every session (energy against duration), coloured by the model's verdict."""
    t = v.transactions
    fields = ["ocpp.charge_point_id", "ocpp.transaction_id", "chargewatch.session.duration_s",
              "chargewatch.session.energy_wh", "chargewatch.anomaly.score", "chargewatch.anomaly.is_anomaly"]

    def first(name: str) -> str:
        return f"datum.fields['{name}'][0]"

    def has(name: str) -> str:
        return f"isValid(datum.fields['{name}'])"

    spec: Json = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "autosize": {"type": "fit", "contains": "padding"},
        "data": {"url": {"index": t.title, "%context%": True, "%timefield%": t.time_field,
                         "body": {"size": 5000, "_source": False, "fields": fields,
                                  "sort": [{fields[4]: {"order": "desc", "unmapped_type": "float"}}]}},
                 "format": {"property": "hits.hits"}},
        "transform": [
            {"filter": " && ".join(["isValid(datum.fields)", has(fields[2]), has(fields[3])])},
            {"calculate": f"{first(fields[2])} / 60", "as": "minutes"},
            {"calculate": f"{first(fields[3])} / 1000", "as": "kwh"},
            {"calculate": f"{has(fields[5])} && {first(fields[5])} ? 'anomalous' : 'normal'", "as": "verdict"},
            {"calculate": f"{has(fields[4])} ? {first(fields[4])} : null", "as": "score"},
            {"calculate": f"{has(fields[0])} ? {first(fields[0])} : ''", "as": "charge_point"},
            {"calculate": f"{has(fields[1])} ? {first(fields[1])} : ''", "as": "transaction"},
        ],
        "mark": {"type": "point", "filled": True, "size": 40},
        "encoding": {
            "x": {"field": "minutes", "type": "quantitative", "title": "Duration (minutes)"},
            "y": {"field": "kwh", "type": "quantitative", "title": "Energy (kWh)"},
            "color": {"field": "verdict", "type": "nominal", "title": "Model verdict",
                      "scale": {"domain": ["normal", "anomalous"], "range": ["#54B399", "#E7664C"]}},
            "tooltip": [
                {"field": "charge_point", "type": "nominal", "title": "Charge point"},
                {"field": "transaction", "type": "nominal", "title": "Transaction"},
                {"field": "minutes", "type": "quantitative", "format": ".1f", "title": "Minutes"},
                {"field": "kwh", "type": "quantitative", "format": ".2f", "title": "kWh"},
                {"field": "score", "type": "quantitative", "format": ".3f", "title": "Anomaly score"},
            ],
        },
    }
    return vega(v.oid("tx-energy-vs-duration"), "Energy vs duration per session",
                "Each point is a session (up to 5,000, most anomalous first); red ones the model flagged.", spec)


def transactions(v: Views) -> list[Json]:
    """(d) Charging sessions: anomaly scores over time, energy against duration, the most
    anomalous sessions and the abnormal-transaction alerts."""
    t, a = v.transactions, v.alerts
    score = "chargewatch.anomaly.score"
    numbers = [
        ("tx-count", "Sessions", count("Sessions")),
        ("tx-anomalous", "Anomalous sessions", count("Anomalous", ANOMALOUS)),
        ("tx-energy", "Energy delivered (Wh)", metric(t, "sum", "chargewatch.session.energy_wh", "Wh")),
        ("tx-max-score", "Highest anomaly score", metric(t, "max", score, "Score")),
    ]
    kind, state = big_number("value")
    metrics = [lens(t, v.oid(oid), title, "", kind, {"value": column}, state) for oid, title, column in numbers]
    score_kind, score_state = xy("line", "time", ["max", "avg", "threshold"])
    scores = lens(t, v.oid("tx-score-over-time"), "Anomaly score over time",
                  "Highest and average session score per interval against the model's threshold.", score_kind,
                  {"time": date_histogram(t, "Session start"), "max": metric(t, "max", score, "Highest score"),
                   "avg": metric(t, "average", score, "Average score"),
                   "threshold": metric(t, "max", "chargewatch.anomaly.threshold", "Threshold")}, score_state)
    volume_kind, volume_state = xy("bar", "time", ["count", "anomalous"])
    volume = lens(t, v.oid("tx-sessions-over-time"), "Sessions over time", "", volume_kind,
                  {"time": date_histogram(t, "Session start"), "count": count("Sessions"),
                   "anomalous": count("Anomalous", ANOMALOUS)}, volume_state)
    per_cp_kind, per_cp_state = table(["cp", "anomalous", "count", "max", "energy"], "anomalous")
    per_cp = lens(t, v.oid("tx-per-charge-point"), "Anomalous sessions per charge point", "", per_cp_kind,
                  {"cp": terms(t, "ocpp.charge_point_id", "Charge point", "anomalous", 20, other=False),
                   "anomalous": count("Anomalous", ANOMALOUS), "count": count("Sessions"),
                   "max": metric(t, "max", score, "Highest score"),
                   "energy": metric(t, "sum", "chargewatch.session.energy_wh", "Energy (Wh)")}, per_cp_state)
    top = saved_search(t, v.oid("tx-top-anomalous"), "Top anomalous sessions",
                       "Scored sessions, highest anomaly score first, with the features that weighed most.",
                       ["ocpp.charge_point_id", "ocpp.transaction_id", score, "chargewatch.anomaly.threshold",
                        "chargewatch.anomaly.top_features", "chargewatch.session.energy_wh",
                        "chargewatch.session.duration_s", "chargewatch.session.peak_power_w", "ocpp.id_token",
                        "ocpp.stop_reason", "chargewatch.anomaly.model"], f"{score}:*", [(score, "desc")])
    alerts = saved_search(a, v.oid("tx-alerts"), "Abnormal-transaction alerts", "",
                          ["ocpp.charge_point_id", "chargewatch.severity_name", "rule.id", "rule.name", "message"],
                          kql_is("rule.category", "abnormal_transaction"))
    panels = [Panel(x, 12 * i, 0, 12, 6) for i, x in enumerate(metrics)] + [
        Panel(scores, 0, 6, 24, 14), Panel(energy_vs_duration(v), 24, 6, 24, 14),
        Panel(volume, 0, 20, 24, 12), Panel(per_cp, 24, 20, 24, 12),
        Panel(top, 0, 32, 48, 16), Panel(alerts, 0, 48, 48, 12),
    ]
    board = dashboard(v.oid("transactions"), "[Chargewatch] Transactions",
                      "Charging sessions as the anomaly models scored them: scores over time, energy against "
                      "duration, the most anomalous sessions and the abnormal-transaction alerts.", panels, "now-7d")
    return [p.obj for p in panels] + [board]

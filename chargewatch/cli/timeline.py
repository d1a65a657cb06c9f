"""``chargewatch timeline CP_ID``: what one charge point said and was told, and what was raised, in order."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from chargewatch.config import Config
from chargewatch.errors import ConfigError, StoreError
from chargewatch.responder.common import add_store_argument, duration_arg, open_store, time_arg, write_table
from chargewatch.responder.common import parse_time as resolve_time
from chargewatch.responder.timeline import Entry, Timeline, build_timeline, epoch
from chargewatch.store.documents import get_field, precise_time

DEFAULT_WINDOW_S = 600.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("timeline", help="records and alerts of one charge point in time order",
                       description="The archived OCPP messages and connection events of one charge point and its "
                                   "alerts, in time order: each CALL paired with its answer (latency shown), the "
                                   "message that triggered an alert marked, alerts at their time. Exit status 2 "
                                   "for an unknown alert or a bad time.")
    p.add_argument("charge_point", nargs="?", metavar="CP_ID",
                   help="charge point identity (optional with --around: the alert's charge point)")
    p.add_argument("--around", metavar="ALERT_ID", help="centre on this alert: from --window before its first "
                                                        "occurrence to --window after its last")
    p.add_argument("--window", type=duration_arg, default=DEFAULT_WINDOW_S, metavar="DURATION",
                   help="with --around: how much before and after (default 10m)")
    p.add_argument("--since", type=time_arg, metavar="TIME", help="from this time: 24h, 7d (before now) or ISO 8601")
    p.add_argument("--until", type=time_arg, metavar="TIME", help="up to this time (same forms)")
    p.add_argument("--limit", type=int, default=10_000, metavar="N", help="records at most (default 10000)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_store_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    now = time.time()
    store = open_store(args.store, config)
    try:
        around = None
        since = resolve_time(args.since, now) if args.since else None
        until = resolve_time(args.until, now) if args.until else None
        if args.around:
            around = store.get_alert(args.around)
            if around is None:
                raise StoreError(f"no alert with id {args.around!r}")
            since = since if since is not None else epoch(around["@timestamp"]) - args.window
            until = until if until is not None else epoch(get_field(around, "event.end")) + args.window
        cp_id = _charge_point(args.charge_point, around)
        timeline = build_timeline(store, cp_id, since, until, args.limit, (around,) if around else ())
    finally:
        store.close()
    if args.format == "json":
        json.dump({"charge_point_id": cp_id, "since": _iso(since), "until": _iso(until),
                   "around": args.around, "truncated": timeline.truncated,
                   "entries": [e.to_json() for e in timeline.entries]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        write_timeline(timeline, sys.stdout)
    return 0


def _charge_point(given: str | None, around: dict[str, Any] | None) -> str:
    alert_cp = get_field(around, "ocpp.charge_point_id") if around else None
    if given and alert_cp and given != alert_cp:
        raise ConfigError(f"alert {get_field(around or {}, 'event.id')} is about {alert_cp!r}, not {given!r}")
    cp_id = given or alert_cp
    if not cp_id:
        raise ConfigError("name a charge point (CP_ID) or an alert (--around ALERT_ID)")
    return str(cp_id)


def _iso(ts: float | None) -> str | None:
    return precise_time(ts) if ts is not None else None


def write_timeline(timeline: Timeline, out: TextIO) -> None:
    """The timeline as a table: one line per record, its answer on the next line, alerts as ALERT lines."""
    span = f"{_iso(timeline.since) or 'start'} .. {_iso(timeline.until) or 'end'}"
    alerts = sum(e.kind == "alert" for e in timeline.entries)
    plural = "" if alerts == 1 else "s"
    out.write(f"timeline of {timeline.charge_point_id}  {span}  ({timeline.records} records, {alerts} alert{plural})\n")
    rows: list[list[str]] = []
    for entry in timeline.entries:
        rows.extend(_rows(entry))
    if not rows:
        out.write("nothing archived for this charge point in this window\n")
        return
    write_table(out, ("time (UTC)", "mark", "who", "type", "action", "message id", "detail"), rows)
    if timeline.truncated:
        out.write(f"(stopped at {timeline.records} records: narrow the window or raise --limit)\n")


def _rows(entry: Entry) -> list[list[str]]:
    doc = entry.doc
    if entry.kind == "alert":
        severity = get_field(doc, "chargewatch.severity_name") if get_field(doc, "event.kind") == "alert" else "event"
        return [[doc["@timestamp"], "ALERT", "", str(severity), str(get_field(doc, "rule.id")),
                 str(get_field(doc, "event.id")), str(doc.get("message", ""))]]
    rows = [[doc["@timestamp"], _mark(entry.triggers), *_describe(doc)]]
    if entry.answer is not None:
        answer = _describe(entry.answer)
        answer[1] = "  -> " + answer[1]
        answer[4] = f"+{entry.latency_ms:.1f} ms" + (f"; {answer[4]}" if answer[4] else "")
        rows.append([entry.answer["@timestamp"], _mark(entry.answer_triggers), *answer])
    elif get_field(doc, "ocpp.message_type") == 2:
        rows[0][-1] = "no answer in view" + (f"; {rows[0][-1]}" if rows[0][-1] else "")
    return rows


def _mark(alert_ids: list[str]) -> str:
    return "TRIGGER " + ",".join(a[:8] for a in alert_ids) if alert_ids else ""


def _describe(doc: dict[str, Any]) -> list[str]:
    """who, type, action, message id and detail of a record document."""
    if get_field(doc, "event.dataset") == "chargewatch.connection":
        return ["", str(get_field(doc, "event.action")), "", "", _connection_detail(doc)]
    details = [f"{name} {get_field(doc, field)}" for name, field in
               (("status", "ocpp.status"), ("error", "ocpp.error_code"), ("transaction", "ocpp.transaction_id"),
                ("connector", "ocpp.connector_id"), ("idToken", "ocpp.id_token"))
               if get_field(doc, field) is not None]
    flags = get_field(doc, "ocpp.flags")
    if flags:
        details.append("flags " + ",".join(flags))
    return [str(get_field(doc, "ocpp.direction") or ""), str(get_field(doc, "ocpp.message_type_name") or ""),
            str(get_field(doc, "ocpp.action") or ""), str(get_field(doc, "ocpp.message_id") or ""), "; ".join(details)]


def _connection_detail(doc: dict[str, Any]) -> str:
    parts = [f"{get_field(doc, 'source.ip')}:{get_field(doc, 'source.port')} -> "
             f"{get_field(doc, 'destination.ip')}:{get_field(doc, 'destination.port')}"]
    for name, field in (("subprotocol", "ocpp.subprotocol"), ("status", "ocpp.http_status"),
                        ("auth", "ocpp.auth_scheme"), ("user", "ocpp.auth_username"), ("tls", "tls.version")):
        value = get_field(doc, field)
        if value is not None:
            parts.append(f"{name} {value}")
    return "; ".join(parts)

"""``chargewatch alerts``: query alerts in Elasticsearch or the embedded store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from chargewatch.alerts import CATEGORIES, SEVERITY_NAMES
from chargewatch.config import Config
from chargewatch.responder.common import add_store_argument, open_store, parse_time, time_arg, write_table
from chargewatch.store import TRIAGE_STATES, AlertQuery
from chargewatch.store.documents import get_field

SEVERITY_LEVELS = {name: level for level, name in SEVERITY_NAMES.items()}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("alerts", help="list alerts (Elasticsearch or the embedded store), newest first",
                       description="List alerts matching every filter given, newest first. Exit status 2 for a "
                                   "bad time or an unreachable store.")
    p.add_argument("--since", type=time_arg, metavar="TIME",
                   help="first occurrence at or after: a duration before now (24h, 7d) or an ISO 8601 time")
    p.add_argument("--until", type=time_arg, metavar="TIME", help="first occurrence at or before (same forms)")
    p.add_argument("--cp", metavar="ID", help="charge point identity")
    p.add_argument("--category", choices=CATEGORIES, help="rule category")
    p.add_argument("--severity", choices=tuple(SEVERITY_LEVELS), help="minimum severity")
    p.add_argument("--rule", metavar="RULE_ID", help="rule id, e.g. CW-REPLAY-001")
    p.add_argument("--site", help="site of the charge point (operator policy)")
    p.add_argument("--status", choices=TRIAGE_STATES, help="triage status (new includes never triaged)")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N alerts (default 100)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table, or json: a JSON array of the alert documents")
    add_store_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    now = time.time()
    query = AlertQuery(since=parse_time(args.since, now) if args.since else None,
                       until=parse_time(args.until, now) if args.until else None,
                       charge_point_id=args.cp, category=args.category,
                       min_severity=SEVERITY_LEVELS[args.severity] if args.severity else None, rule_id=args.rule,
                       site=args.site, triage_status=args.status, limit=args.limit)
    store = open_store(args.store, config)
    try:
        docs = store.search(query)
    finally:
        store.close()
    if args.format == "json":
        json.dump(docs, sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    if not docs:
        print("no alerts match")
        return 0
    write_table(sys.stdout, ("time (UTC)", "severity", "rule", "charge point", "site", "status", "count", "alert id",
                             "reason"), [_row(d) for d in docs])
    if len(docs) >= args.limit:
        print(f"(the newest {args.limit} shown: --limit N for more)")
    return 0


def _row(doc: dict[str, Any]) -> list[str]:
    is_alert = get_field(doc, "event.kind") == "alert"
    return [doc["@timestamp"], str(get_field(doc, "chargewatch.severity_name")) if is_alert else "(event)",
            str(get_field(doc, "rule.id")), str(get_field(doc, "ocpp.charge_point_id")),
            str(get_field(doc, "chargewatch.site") or ""), str(get_field(doc, "triage.status") or "new"),
            str(get_field(doc, "chargewatch.occurrences") or 1), str(get_field(doc, "event.id")),
            str(doc.get("message", ""))]

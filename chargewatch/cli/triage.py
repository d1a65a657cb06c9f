"""``chargewatch triage ALERT_ID --status ...``: record what a person decided about an alert."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from chargewatch.config import Config
from chargewatch.responder.common import add_store_argument, open_store
from chargewatch.store import TRIAGE_STATES
from chargewatch.store.documents import get_field


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("triage", help="set an alert's triage status (new, acknowledged, closed) with a note",
                       description="Set the triage status of one alert, with a note and who decided. The pipeline "
                                   "never overwrites it. Exit status 2 for an unknown alert.")
    p.add_argument("alert_id", metavar="ALERT_ID")
    p.add_argument("--status", required=True, choices=TRIAGE_STATES)
    p.add_argument("--note", default="", help="why (free text; replaces the previous note)")
    p.add_argument("--user", help="who decided (default: $USER, else the login name)")
    add_store_argument(p)
    p.set_defaults(run=run)


def default_user() -> str:
    """$USER, else the OS login name (read here, at the entry point only)."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return f"uid-{os.getuid()}"


def run(args: argparse.Namespace, config: Config) -> int:
    user = args.user or default_user()
    store = open_store(args.store, config)
    try:
        doc = store.set_triage(args.alert_id, args.status, args.note, user)
    finally:
        store.close()
    sys.stdout.write(f"{get_field(doc, 'event.id')}  {get_field(doc, 'rule.id')}  "
                     f"{get_field(doc, 'ocpp.charge_point_id')}  -> {get_field(doc, 'triage.status')} by "
                     f"{get_field(doc, 'triage.updated_by')} at {get_field(doc, 'triage.updated_at')}\n")
    return 0

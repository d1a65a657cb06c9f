"""``chargewatch export ALERT_ID --out DIR``: the evidence bundle of one alert."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from chargewatch.config import Config
from chargewatch.responder.bundle import write_bundle
from chargewatch.responder.common import add_store_argument, duration_arg, open_store

DEFAULT_WINDOW_S = 600.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write an alert's evidence bundle (alert, messages, pcap, manifest)",
                       description="Write the evidence bundle of one alert into DIR: alert.json, messages.jsonl "
                                   "(the charge point's archived records around the alert), evidence.pcap (its "
                                   "connection's packets from the original capture, redacted, when that capture "
                                   "can be found), README.txt and manifest.json (SHA-256 of every file). Exit "
                                   "status 2 for an unknown alert.")
    p.add_argument("alert_id", metavar="ALERT_ID")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle directory (created if missing)")
    p.add_argument("--window", type=duration_arg, default=DEFAULT_WINDOW_S, metavar="DURATION",
                   help="records and packets from this long before the alert's first occurrence to this long "
                        "after its last (default 10m)")
    p.add_argument("--capture-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="where to look for the capture file the alert came from (repeatable; also a file); then "
                        "where `analyze --store` read it, then the working directory")
    add_store_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    now = time.time()
    store = open_store(args.store, config)
    try:
        remembered = getattr(store, "capture_location", None)  # the embedded store knows where it read captures
        bundle = write_bundle(store, args.alert_id, args.out, args.window, now, args.capture_dir, remembered)
    finally:
        store.close()
    sys.stdout.write(f"evidence bundle of {args.alert_id} in {bundle.directory}: {bundle.records} records, "
                     f"pcap {bundle.pcap.status} ({bundle.pcap.detail})\n")
    for name, digest in bundle.files.items():
        sys.stdout.write(f"  {digest}  {name}\n")
    return 0

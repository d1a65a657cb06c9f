"""``chargewatch status``: the counters long-running collectors write (see chargewatch.status)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chargewatch.config import Config
from chargewatch.status import COUNTERS, read_status


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show the counters of running collectors",
                       description="Print the counters (frames, messages, bytes, errors, drops) that the live "
                                   "capture, log and proxy collectors write to [collector] status_dir.")
    p.add_argument("--dir", type=Path, default=None, help="status directory (default: [collector] status_dir)")
    p.add_argument("--json", action="store_true", help="print the documents as one JSON array")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    directory = args.dir or Path(config.collector.status_dir).expanduser()
    docs = read_status(directory)
    if args.json:
        print(json.dumps(docs, indent=1, sort_keys=True))
        return 0
    if not docs:
        print(f"no collector status in {directory}")
        return 0
    print(f"{'name':24} {'kind':8} {'state':10} " + " ".join(f"{c:>12}" for c in COUNTERS) + "  updated")
    for doc in docs:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(doc.get("updated", 0))))
        print(f"{doc.get('name', '?'):24} {doc.get('kind', '?'):8} {doc['state']:10} "
              + " ".join(f"{int(doc.get(c, 0)):>12}" for c in COUNTERS) + f"  {updated}")
    return 0

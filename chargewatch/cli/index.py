"""``chargewatch index``: the indexer stage, alerts topic → Elasticsearch."""

from __future__ import annotations

import argparse
import sys

from chargewatch.config import Config
from chargewatch.faults import FaultPoints
from chargewatch.store.elastic import ElasticAlertStore
from dashboards.indexer import run_indexer


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="index alerts from Kafka into Elasticsearch",
                       description="Consume the alerts topic and bulk-index alerts into Elasticsearch; "
                                   "offsets are committed only after Elasticsearch accepted the batch.")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after this many seconds without new alerts (default: run forever)")
    p.add_argument("--kill-at", default=None, metavar="POINT:N",
                   help="crash testing: SIGKILL at the Nth pass of POINT (alerts_indexed, after_commit)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    store = ElasticAlertStore(config.elasticsearch)
    try:
        stats, stage = run_indexer(config, store, FaultPoints(args.kill_at), args.idle_exit)
    finally:
        store.close()
    print(f"indexer: {stats.records} alert records in {stats.batches} batches, {stage.indexed} new alerts, "
          f"{stage.bad_records} bad records", file=sys.stderr)
    return 0

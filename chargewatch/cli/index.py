"""``chargewatch index``: the indexer stage, Kafka → Elasticsearch (alerts, message archive, assets,
charging sessions)."""

from __future__ import annotations

import argparse
import sys

from chargewatch.config import Config
from chargewatch.store.elastic import ElasticAlertStore
from dashboards.indexer import WHAT, run_indexer


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "index", help="index alerts, archive messages and sessions from Kafka into Elasticsearch",
        description="Consume the alerts topic into the alerts index, the messages topic into the message "
                    "archive and the asset inventory, and the sessions topic into the transactions index; a "
                    "batch's offsets are committed only after Elasticsearch accepted it. Also runs the retention "
                    "sweep every [elasticsearch] retention_sweep_interval_s.")
    p.add_argument("--what", choices=WHAT, default="all",
                   help="alerts (group [kafka] indexer_group), messages (group <indexer_group>-archive), "
                        "sessions (group <indexer_group>-sessions, [kafka] sessions_topic into "
                        "<prefix>-transactions) or all of them in one process (default: all)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit once every loop has gone this many seconds without records (default: run forever)")
    p.add_argument("--kill-at", default=None, metavar="POINT:N",
                   help="crash testing: SIGKILL at the Nth pass of POINT (alerts_indexed, records_archived, "
                        "sessions_indexed, before_flush, after_flush, after_commit)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    store = ElasticAlertStore(config.elasticsearch)
    try:
        result = run_indexer(config, store, args.kill_at, args.idle_exit, args.what)
    finally:
        store.close()
    print(result.summary(), file=sys.stderr)
    return 0

"""``chargewatch setup``: install index templates, indices and retention (idempotent)."""

from __future__ import annotations

import argparse

from chargewatch.config import Config
from chargewatch.store.elastic import ElasticAlertStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "setup", help="install Elasticsearch templates, indices and retention",
        description="Install the index templates of the alerts, the message archive and the asset inventory, "
                    "create the alerts and asset indices (or bring their mappings up to date), install retention "
                    "(ILM where the cluster has it, else the retention sweep) and run one sweep. Prints what it "
                    "did and which retention mechanism is in force. Safe to run any number of times.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    store = ElasticAlertStore(config.elasticsearch)
    try:
        print(store.setup())
    finally:
        store.close()
    return 0

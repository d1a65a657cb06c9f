"""``chargewatch setup``: install index templates and indices (idempotent)."""

from __future__ import annotations

import argparse

from chargewatch.config import Config
from chargewatch.store.elastic import ElasticAlertStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("setup", help="install Elasticsearch templates and indices",
                       description="Install the alert index template and create the alerts index. Safe to run twice.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    store = ElasticAlertStore(config.elasticsearch)
    try:
        print(store.setup())
    finally:
        store.close()
    return 0

"""``chargewatch pseudonym TAG``: the pseudonym a card's idTag gets in alerts and indices."""

from __future__ import annotations

import argparse

from chargewatch.config import Config, resolve_redaction_key
from chargewatch.redaction import Redactor


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pseudonym", help="print the pseudonym of an idTag/idToken",
                       description="Print the keyed pseudonym that replaces TAG in every record, so a "
                                   "responder can look a card up. Uses the configured redaction key.")
    p.add_argument("tags", nargs="+", metavar="TAG", help="idTag or idToken value (case-insensitive)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    redactor = Redactor(resolve_redaction_key(config.redaction))
    for tag in args.tags:
        print(f"{tag}\t{redactor.pseudonym(tag)}")
    return 0

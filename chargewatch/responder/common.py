"""Shared pieces of the responder commands: durations (``10m``, ``24h``, ``7d``), points in time
(a duration ago or an ISO 8601 time), opening the store a command names, and plain-text tables."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from chargewatch.config import Config
from chargewatch.errors import ConfigError
from chargewatch.store import Store

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``10m``, ``24h``, ``7d`` or ``2w``; ConfigError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(f"bad duration {text!r}: use a number followed by ms, s, m, h, d or w "
                          "(e.g. 10m, 24h, 7d)")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_time(text: str, now: float) -> float:
    """Epoch seconds of ``text``: a duration before now (``24h``) or an ISO 8601 time
    (``2026-11-25T14:32:00Z``, ``2026-11-25``; without an offset it is UTC)."""
    if _DURATION.fullmatch(text.strip().lower()):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"bad time {text!r}: use a duration before now (24h, 7d) or an ISO 8601 time "
                          "(2026-11-25T14:32:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def duration_arg(text: str) -> float:
    """argparse ``type=`` for a duration: a bad one is a usage error (exit status 2)."""
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def time_arg(text: str) -> str:
    """argparse ``type=`` for a point in time: checked now, resolved against the clock in run()."""
    try:
        parse_time(text, 0.0)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """``--store FILE.db``: the embedded store; without it the command reads Elasticsearch."""
    parser.add_argument("--store", type=Path, metavar="FILE.db",
                        help="the embedded SQLite store written by `chargewatch analyze --store` "
                             "(default: Elasticsearch from the configuration)")


def open_store(path: Path | None, config: Config) -> Store:
    """The SQLite store at path (which must exist), else the Elasticsearch store of the config."""
    if path is not None:
        from chargewatch.store.sqlite import SqliteAlertStore

        return SqliteAlertStore(path, create=False)
    from chargewatch.store.elastic import ElasticAlertStore

    # The client logs every retry with a traceback; an unreachable cluster is reported once, as
    # a ServiceError naming the URL (exit status 2).
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    store = ElasticAlertStore(config.elasticsearch)
    store.check()
    return store


def write_table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; the last column is left unpadded (free text)."""
    table = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")

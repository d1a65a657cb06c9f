"""Elasticsearch index names and index templates, generated from :mod:`chargewatch.schema`.

Three kinds of index:

- **alerts**: one plain index (``[elasticsearch] alerts_index``), updated in place (storms,
  triage), so not a data stream;
- **message archive**: one index per UTC day of record time, ``<prefix>-messages-YYYY.MM.DD``,
  so retention deletes whole indices instead of documents;
- **asset inventory**: one plain index ``<prefix>-assets``, one document per charge point;
- **transactions**: one plain index ``<prefix>-transactions``, one document per charging session
  with its features and anomaly score (``_id`` from charge point and transaction id).

``<prefix>`` is the alerts index name without a trailing ``-alerts`` (``chargewatch`` for the
default ``chargewatch-alerts``), so one setting names all four and two deployments (or two
tests) sharing a cluster never share an index.

The templates of the default names are committed under ``dashboards/elasticsearch/`` (one JSON
file per template); regenerate them with ``python -m chargewatch.store.es_templates --write
dashboards/elasticsearch`` and check them with ``--check`` (a test does the same).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chargewatch.config import ElasticsearchConfig
from chargewatch.schema import (
    ASSET_FIELDS,
    MESSAGE_FIELDS,
    TRANSACTION_FIELDS,
    alert_index_template,
    mapping_properties,
)

# Above the alerts template (200): with a test's derived names the alerts pattern ``<index>-*``
# also matches the archive and asset indices, and the more specific template must win.
ARCHIVE_PRIORITY = 210
DAY_FORMAT = "%Y.%m.%d"
# Archive and assets hold values straight from charge points' payloads: a hostile number too
# large for a long, or a keyword longer than Lucene's 32 KiB term limit, must not make
# Elasticsearch refuse the whole document (and stall the indexer on it). Such a value stays in
# _source and is just not indexed, as in ECS (ignore_above 1024 on keywords).
SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0, "index.mapping.ignore_malformed": True}
KEYWORD_IGNORE_ABOVE = 1024


@dataclass(frozen=True)
class IndexNames:
    """Every index and template name of one deployment."""

    alerts: str
    prefix: str

    @classmethod
    def from_config(cls, cfg: ElasticsearchConfig) -> IndexNames:
        index = cfg.alerts_index
        prefix = index.removesuffix("-alerts") if index.endswith("-alerts") and index != "-alerts" else index
        return cls(alerts=index, prefix=prefix)

    @property
    def messages_template(self) -> str:
        return f"{self.prefix}-messages"

    @property
    def messages_pattern(self) -> str:
        """Wildcard matching every archive index (and nothing else of ours)."""
        return f"{self.prefix}-messages-*"

    @property
    def assets(self) -> str:
        return f"{self.prefix}-assets"

    @property
    def transactions(self) -> str:
        return f"{self.prefix}-transactions"

    def messages_index(self, ts: float) -> str:
        """Archive index of a record captured at ts (epoch seconds): its UTC day."""
        return f"{self.prefix}-messages-{datetime.fromtimestamp(ts, UTC).strftime(DAY_FORMAT)}"

    def messages_day(self, index: str) -> datetime | None:
        """UTC start of the day an archive index holds; None for a name that is not one."""
        head = f"{self.prefix}-messages-"
        if not index.startswith(head):
            return None
        try:
            return datetime.strptime(index[len(head):], DAY_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return None


def messages_index_template(names: IndexNames) -> dict[str, Any]:
    """Template of the daily archive indices (one document per record, ``_id`` = its identity)."""
    return _strict_template(names.messages_pattern, MESSAGE_FIELDS, "message")


def assets_index_template(names: IndexNames) -> dict[str, Any]:
    """Template of the asset inventory (one document per charge point, ``_id`` = its id)."""
    return _strict_template(names.assets, ASSET_FIELDS, "asset")


def transactions_index_template(names: IndexNames) -> dict[str, Any]:
    """Template of the transactions index (one document per charging session, ``_id`` from its
    charge point and transaction id)."""
    return _strict_template(names.transactions, TRANSACTION_FIELDS, "transaction")


def _strict_template(pattern: str, fields: dict[str, dict[str, Any]], document: str) -> dict[str, Any]:
    """An archive-priority template whose strict mapping is the schema's fields."""
    return {
        "index_patterns": [pattern],
        "priority": ARCHIVE_PRIORITY,
        "template": {
            "settings": dict(SETTINGS),
            "mappings": {"dynamic": "strict", "properties": bounded(mapping_properties(fields))},
        },
        "_meta": {"managed_by": "chargewatch", "document": document},
    }


def alerts_index_template(names: IndexNames) -> dict[str, Any]:
    """Template of the alerts index (:func:`chargewatch.schema.alert_index_template`), with the
    keywords bounded: an alert carries the triggering message's id, which a hostile charge
    point chooses (CW-PROTO-006 fires on ids over 36 characters)."""
    body = alert_index_template(names.alerts)
    body["template"]["mappings"]["properties"] = bounded(body["template"]["mappings"]["properties"])
    return body


def bounded(properties: dict[str, Any]) -> dict[str, Any]:
    """Mapping properties with ``ignore_above`` on every keyword field that has none."""
    out: dict[str, Any] = {}
    for name, original in properties.items():
        spec = dict(original)
        if "properties" in spec:
            spec["properties"] = bounded(spec["properties"])
        elif spec.get("type") == "keyword":
            spec.setdefault("ignore_above", KEYWORD_IGNORE_ABOVE)
        out[name] = spec
    return out


def index_templates(names: IndexNames) -> dict[str, dict[str, Any]]:
    """Template name -> body (as sent to ``PUT _index_template/<name>``), alerts first."""
    return {
        names.alerts: alerts_index_template(names),
        names.messages_template: messages_index_template(names),
        names.assets: assets_index_template(names),
        names.transactions: transactions_index_template(names),
    }


def render(body: dict[str, Any]) -> str:
    """The committed form of a template: sorted keys, two-space indent, trailing newline."""
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def committed_files(names: IndexNames | None = None) -> dict[str, str]:
    """File name -> content of the committed templates (default names unless given)."""
    names = names or IndexNames.from_config(ElasticsearchConfig())
    return {f"{name}.json": render(body) for name, body in index_templates(names).items()}


def drift(directory: Path) -> list[str]:
    """One message per committed template that differs from the definition (with a unified
    diff), is missing, or is left over; empty when the directory is up to date."""
    expected = committed_files()
    problems: list[str] = []
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing (run python -m chargewatch.store.es_templates --write {directory})")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = "".join(difflib.unified_diff(current.splitlines(keepends=True), text.splitlines(keepends=True),
                                                fromfile=f"{path} (committed)", tofile=f"{path} (from schema)"))
            problems.append(f"{path}: differs from chargewatch/schema.py\n{diff}")
    problems += [f"{path}: not generated from the schema (remove it)" for path in sorted(directory.glob("*.json"))
                 if path.name not in expected]
    return problems


def write(directory: Path) -> list[Path]:
    """Write the templates of the default names into directory; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in committed_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chargewatch.store.es_templates --write DIR | --check DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m chargewatch.store.es_templates",
        description="Generate the Elasticsearch index templates from chargewatch/schema.py.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="DIR", help="(re)write the template files into DIR")
    group.add_argument("--check", type=Path, metavar="DIR", help="exit 1 when DIR differs from the schema")
    args = parser.parse_args(argv)
    if args.write is not None:
        for path in write(args.write):
            print(f"wrote {path}")
        return 0
    problems = drift(args.check)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.check}: templates match chargewatch/schema.py")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

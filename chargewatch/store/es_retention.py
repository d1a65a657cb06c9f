"""Retention of the message archive and the alerts in Elasticsearch.

Two mechanisms, chosen per cluster at ``chargewatch setup`` (and at the indexer's start):

- **ILM**, where the cluster has it (every node lists the ``x-pack-ilm`` module and
  ``GET _ilm/status`` answers ``RUNNING``): a lifecycle
  policy ``<prefix>-messages`` deletes each daily archive index once its day is older than
  ``messages_retention_days`` (the day is parsed from the index name,
  ``index.lifecycle.parse_origination_date``, so a backfill of old captures ages by record
  time, not by ingestion time).
- **The retention sweep** everywhere else (the dev stack's minimal Elasticsearch has no ILM, no
  ``_delete_by_query`` and no painless): archive indices whose whole day is older than the
  retention are deleted by name.

Alerts live in one plain index (updated in place), which ILM cannot thin out, so the sweep
always removes alerts whose last occurrence (``event.end``) is older than
``alerts_retention_days``. It finds them with a search and deletes them by id with their
sequence number, which works on any cluster; an alert a storm updated meanwhile is left alone.
The sweep runs at every ``chargewatch setup`` and every ``retention_sweep_interval_s`` in
``chargewatch index``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chargewatch.alerts import iso_time
from chargewatch.config import ElasticsearchConfig
from chargewatch.errors import ChargewatchError, ConfigError, StoreError
from chargewatch.store.es_templates import IndexNames

log = logging.getLogger(__name__)

DAY_S = 86_400
PAGE = 1_000


@dataclass(frozen=True)
class Retention:
    """Configured retention and whether ILM manages the archive on this cluster."""

    messages_days: int
    alerts_days: int
    ilm: bool

    @classmethod
    def from_config(cls, cfg: ElasticsearchConfig, ilm: bool) -> Retention:
        for key in ("messages_retention_days", "alerts_retention_days"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"[elasticsearch] {key} must be 0 (keep forever) or a number of days, "
                                  f"got {getattr(cfg, key)}")
        if cfg.retention_sweep_interval_s < 0:
            raise ConfigError("[elasticsearch] retention_sweep_interval_s must be 0 (no periodic sweep) or seconds, "
                              f"got {cfg.retention_sweep_interval_s}")
        return cls(cfg.messages_retention_days, cfg.alerts_retention_days, ilm and cfg.messages_retention_days > 0)

    def describe(self, names: IndexNames, interval_s: float) -> str:
        """Plain sentences saying which mechanism deletes what, for ``chargewatch setup``."""
        when = (f"at every `chargewatch setup` and every {interval_s:g} s in `chargewatch index`" if interval_s > 0
                else "at every `chargewatch setup` (retention_sweep_interval_s = 0: not in `chargewatch index`)")
        if self.messages_days == 0:
            archive = f"message archive {names.messages_pattern}: kept forever (messages_retention_days = 0)"
        elif self.ilm:
            archive = (f"message archive {names.messages_pattern}: ILM policy {names.messages_template} deletes "
                       f"each daily index {self.messages_days} days after its day")
        else:
            archive = (f"message archive {names.messages_pattern}: no ILM on this cluster, so the retention sweep "
                       f"deletes each daily index once its whole day is more than {self.messages_days} days old, "
                       f"{when}")
        if self.alerts_days == 0:
            alerts = f"alerts {names.alerts}: kept forever (alerts_retention_days = 0)"
        else:
            alerts = (f"alerts {names.alerts}: the retention sweep deletes alerts whose last occurrence is more "
                      f"than {self.alerts_days} days old, {when}")
        return f"retention: {archive}\nretention: {alerts}"


@dataclass
class SweepResult:
    """What one sweep deleted."""

    indices: list[str] = field(default_factory=list)
    alerts: int = 0

    def describe(self) -> str:
        gone = ", ".join(self.indices) if self.indices else "none"
        return f"retention sweep: deleted {len(self.indices)} archive index(es) ({gone}) and {self.alerts} alert(s)"


def ilm_running(client: Any) -> bool:
    """Whether every node has the ILM module and ILM is running. The module list is read first:
    a build without ILM answers ``GET _ilm/status`` with 405, which the client logs as a failed node."""
    from elasticsearch import ApiError

    info = client.nodes.info(metric="plugins", filter_path="nodes.*.modules.name")
    nodes = info.get("nodes", {}).values()
    if not nodes or not all(any(m.get("name") == "x-pack-ilm" for m in n.get("modules", [])) for n in nodes):
        return False
    try:
        status = client.ilm.get_status()
    except ApiError:
        return False
    return bool(status.get("operation_mode") == "RUNNING")


def ilm_policy(days: int) -> dict[str, Any]:
    """Lifecycle policy deleting an archive index days after its origination date."""
    return {"phases": {"hot": {"min_age": "0ms", "actions": {}},
                       "delete": {"min_age": f"{days}d", "actions": {"delete": {}}}}}


def ilm_settings(names: IndexNames) -> dict[str, Any]:
    """Index settings that put an archive index under the policy, aged from the day in its name."""
    return {"index.lifecycle.name": names.messages_template, "index.lifecycle.parse_origination_date": True}


def install_ilm(client: Any, names: IndexNames, retention: Retention) -> str:
    """Install the archive's lifecycle policy and attach it to the archive indices that exist
    already (new ones get it from the template); returns what was done."""
    client.ilm.put_lifecycle(name=names.messages_template, policy=ilm_policy(retention.messages_days))
    existing = archive_indices(client, names)
    if existing:
        client.indices.put_settings(index=",".join(existing), settings=ilm_settings(names))
    return (f"ILM policy {names.messages_template} installed (delete after {retention.messages_days} d), "
            f"attached to {len(existing)} existing archive index(es)")


def archive_indices(client: Any, names: IndexNames) -> list[str]:
    """The archive indices that exist now (named ``<prefix>-messages-YYYY.MM.DD``), sorted."""
    rows = client.cat.indices(index=names.messages_pattern, format="json", h="index", expand_wildcards="all")
    return sorted(row["index"] for row in rows if names.messages_day(row["index"]) is not None)


def expired_indices(indices: list[str], names: IndexNames, days: int, now: float) -> list[str]:
    """Archive indices whose whole day ended more than days before now."""
    cutoff = datetime.fromtimestamp(now, UTC) - timedelta(days=days)
    expired = []
    for index in indices:
        day = names.messages_day(index)
        if day is not None and day + timedelta(days=1) <= cutoff:
            expired.append(index)
    return expired


def sweep(client: Any, names: IndexNames, retention: Retention, now: float) -> SweepResult:
    """Delete what is older than the retention at time now (epoch seconds): expired archive
    indices (unless ILM manages them or retention is 0) and expired alerts."""
    result = SweepResult()
    if retention.messages_days > 0 and not retention.ilm:
        result.indices = expired_indices(archive_indices(client, names), names, retention.messages_days, now)
        for start in range(0, len(result.indices), 50):  # explicit names: destructive_requires_name holds
            client.indices.delete(index=",".join(result.indices[start:start + 50]))
    if retention.alerts_days > 0:
        result.alerts = _delete_alerts_before(client, names.alerts, now - retention.alerts_days * DAY_S)
    return result


def _delete_alerts_before(client: Any, index: str, cutoff: float) -> int:
    """Delete alerts whose last occurrence is before cutoff, page by page; returns how many."""
    from elasticsearch import helpers

    deleted = 0
    query = {"range": {"event.end": {"lt": iso_time(cutoff)}}}
    while True:
        client.options(ignore_status=404).indices.refresh(index=index)
        resp = client.options(ignore_status=404).search(index=index, query=query, size=PAGE, source=False,
                                                        seq_no_primary_term=True, sort=["_doc"])
        hits = resp.get("hits", {}).get("hits", [])
        if not hits:
            return deleted
        actions = [{"_op_type": "delete", "_index": index, "_id": h["_id"], "if_seq_no": h["_seq_no"],
                    "if_primary_term": h["_primary_term"]} for h in hits]
        ok, errors = helpers.bulk(client, actions, raise_on_error=False, raise_on_exception=False)
        failed = [e for e in errors if isinstance(e, dict) and _status(e) not in (404, 409)] \
            if isinstance(errors, list) else []
        if failed:
            raise StoreError(f"retention sweep: Elasticsearch refused to delete {len(failed)} alert(s) from "
                             f"{index}: {failed[0]}")
        deleted += ok
        if len(hits) < PAGE or ok == 0:
            return deleted


def _status(error: dict[str, Any]) -> int:
    body: Any = next(iter(error.values()), {})
    return int(body.get("status", 0)) if isinstance(body, dict) else 0


class RetentionSweeper:
    """Runs a sweep every interval seconds in a background thread (the indexer stage's).

    A failed sweep is logged and tried again at the next interval: retention must never stop
    the indexer from indexing.
    """

    def __init__(self, run_sweep: Callable[[], SweepResult], interval_s: float) -> None:
        self.run_sweep, self.interval_s = run_sweep, interval_s
        self.sweeps = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention-sweep", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        from elasticsearch import ApiError, TransportError

        while not self._stop.wait(self.interval_s):
            try:
                log.info("%s", self.run_sweep().describe())
                self.sweeps += 1
            except (ChargewatchError, ApiError, TransportError) as exc:
                self.failures += 1
                log.error("retention sweep failed (next try in %g s): %s", self.interval_s, exc)

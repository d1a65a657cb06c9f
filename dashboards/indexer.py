"""The indexer stage: alerts topic → Elasticsearch, bulk-indexed, offsets committed after.

Each batch is written with ``create`` and the alert's deterministic id before its offsets
are committed, so a crash re-indexes at most one batch and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chargewatch.alerts import Alert
from chargewatch.config import Config
from chargewatch.consumer import LoopStats, make_consumer, run_loop
from chargewatch.faults import FaultPoints
from chargewatch.kafkaio import ensure_topics
from chargewatch.store import AlertStore

log = logging.getLogger(__name__)


class IndexerStage:
    """Buffers a batch of alert documents and stores them on flush."""

    def __init__(self, store: AlertStore, faults: FaultPoints) -> None:
        self.store, self.faults = store, faults
        self._batch: list[Alert] = []
        self.indexed = 0
        self.bad_records = 0

    def assigned(self, partitions: set[Any]) -> None:
        return None

    def revoked(self, partitions: set[Any]) -> None:
        return None

    def handle(self, tp: Any, records: list[Any]) -> None:
        for rec in records:
            try:
                self._batch.append(Alert.from_document(json.loads(rec.value)))
            except (ValueError, KeyError, TypeError) as exc:
                self.bad_records += 1
                log.error("%s/%s@%s: not an alert document, skipped: %s", rec.topic, rec.partition, rec.offset, exc)

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        self.indexed += self.store.put_alerts(batch)
        self.faults.hit("alerts_indexed")


def run_indexer(config: Config, store: AlertStore, faults: FaultPoints,
                idle_exit: float | None) -> tuple[LoopStats, IndexerStage]:
    """Run the indexer until idle for idle_exit seconds (None: until interrupted)."""
    cfg = config.kafka
    ensure_topics(cfg, [cfg.alerts_topic])
    store.setup()
    stage = IndexerStage(store, faults)
    consumer = make_consumer(cfg, cfg.indexer_group, 1000)
    try:
        stats = run_loop(consumer, cfg.alerts_topic, stage, faults, idle_exit)
    finally:
        consumer.close(autocommit=False)
    return stats, stage

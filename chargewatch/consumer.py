"""The at-least-once consume loop every Kafka stage shares.

A stage handles a batch and returns output; the loop makes that output durable (the stage's
``flush``) *before* committing the batch's offsets. A crash anywhere therefore means
redelivery, never loss; deterministic alert ids make redelivery harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chargewatch.config import KafkaConfig
from chargewatch.errors import ServiceError
from chargewatch.faults import FaultPoints

log = logging.getLogger(__name__)


class Stage(Protocol):
    """What the loop drives."""

    def assigned(self, partitions: set[Any]) -> None:
        """Partitions newly owned by this process (e.g. rebuild their state)."""

    def revoked(self, partitions: set[Any]) -> None:
        """Partitions no longer owned (drop their state)."""

    def handle(self, tp: Any, records: list[Any]) -> None:
        """Process records of one partition, in offset order."""

    def flush(self) -> None:
        """Make everything produced so far durable; raise if it cannot be."""


@dataclass
class LoopStats:
    """What a consume loop did."""

    batches: int = 0
    records: int = 0
    commits: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def make_consumer(cfg: KafkaConfig, group: str, max_records: int) -> Any:
    """A group consumer with manual commits, starting from the earliest retained record."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, group_id=group,
                             client_id=f"{cfg.client_id}-{group}", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=max_records,
                             session_timeout_ms=10_000, heartbeat_interval_ms=1_000)
    except KafkaError as exc:
        raise ServiceError(f"Kafka at {cfg.bootstrap_servers} unreachable: {exc}") from exc


def run_loop(consumer: Any, topic: str, stage: Stage, faults: FaultPoints, idle_exit: float | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> LoopStats:
    """Poll, handle, flush, commit — until idle_exit seconds pass without records (None = forever)."""
    from kafka import ConsumerRebalanceListener
    from kafka.structs import OffsetAndMetadata

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            stage.revoked(set(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            stage.assigned(set(assigned))

    consumer.subscribe([topic], listener=Listener())
    stats, last_data = LoopStats(), time.monotonic()
    while not should_stop():
        batch = consumer.poll(timeout_ms=300)
        if not batch:
            if idle_exit is not None and time.monotonic() - last_data > idle_exit:
                break
            continue
        last_data = time.monotonic()
        offsets = {}
        for tp, records in batch.items():
            stage.handle(tp, records)
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            stats.records += len(records)
        faults.hit("before_flush")
        stage.flush()
        faults.hit("after_flush")
        consumer.commit(offsets)
        stats.batches += 1
        stats.commits += 1
        faults.hit("after_commit")
    return stats

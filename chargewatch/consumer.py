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
JOIN_TIMEOUT_S = 120.0


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
                             session_timeout_ms=cfg.session_timeout_ms, heartbeat_interval_ms=1_000)
    except KafkaError as exc:
        raise ServiceError(f"Kafka at {cfg.bootstrap_servers} unreachable: {exc}") from exc


def _idle(last_activity: float, started: float, idle_exit: float) -> bool:
    now = time.monotonic()
    if last_activity == 0.0:  # never assigned: give the join time, but not forever
        if now - started > max(idle_exit, JOIN_TIMEOUT_S):
            raise ServiceError(f"no partitions assigned after {JOIN_TIMEOUT_S:.0f}s (is the group full?)")
        return False
    return now - last_activity > idle_exit


def run_loop(consumer: Any, topic: str, stage: Stage, faults: FaultPoints, idle_exit: float | None = None,
             should_stop: Callable[[], bool] = lambda: False) -> LoopStats:
    """Poll, handle, flush, commit — until idle_exit seconds pass without records (None = forever).

    The idle clock starts only once partitions are assigned (a group join waits for dead
    members to time out, which is not idleness) and restarts on every rebalance.
    """
    from kafka import ConsumerRebalanceListener
    from kafka.structs import OffsetAndMetadata

    stats, last_activity, started = LoopStats(), [0.0], time.monotonic()

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            stage.revoked(set(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            last_activity[0] = time.monotonic()
            stage.assigned(set(assigned))

    consumer.subscribe([topic], listener=Listener())
    while not should_stop():
        batch = consumer.poll(timeout_ms=300)
        if not batch:
            if idle_exit is not None and _idle(last_activity[0], started, idle_exit):
                break
            continue
        last_activity[0] = time.monotonic()
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

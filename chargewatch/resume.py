"""Resuming a collector after a crash without duplicates in Kafka.

A collector saves its progress (a checkpoint) only after the Kafka producer acknowledged
everything before it, so a crash re-reads at most what came after the last checkpoint. Some
records of that stretch may have reached Kafka (sent, not yet acknowledged): the checkpoint
therefore also records the end offsets of the messages and dead-letter topics
(:meth:`TopicEnds.ends`), and a restart first reads what was written since then
(:meth:`TopicEnds.written_since`) and skips re-sending any record already there
(:class:`RedeliverySkippingSink`). A record's identity is its source (``file#frame`` or
``file#byte offset``), kind, time and, for messages, direction, type and message id.
"""

from __future__ import annotations

import json
import time
from typing import Any

from chargewatch.config import KafkaConfig
from chargewatch.kafkaio import KafkaRecordSink
from chargewatch.model import ConnectionEvent, OcppMessage, Record
from collectors.stats import DeadLetter

SCAN_TIMEOUT_S = 60.0
Identity = tuple[Any, ...]


def identity(value: Record | DeadLetter) -> Identity:
    """What makes a published record the same record (stable across re-reads of its line)."""
    if isinstance(value, OcppMessage):
        return ("m", value.source, value.ts, value.direction.value, value.message_type, value.message_id)
    if isinstance(value, ConnectionEvent):
        return ("c", value.source, value.ts, value.kind, value.connection_id)
    return ("d", value.source, value.ts, value.kind)


def identity_of_dict(doc: dict[str, Any]) -> Identity | None:
    """identity() of a record read back from Kafka (None for something else)."""
    kind = doc.get("record")
    if kind == "message":
        return ("m", doc.get("source"), doc.get("ts"), doc.get("direction"), doc.get("message_type"),
                doc.get("message_id"))
    if kind == "connection":
        return ("c", doc.get("source"), doc.get("ts"), doc.get("kind"), doc.get("connection_id"))
    if kind == "deadletter":
        return ("d", doc.get("source"), doc.get("ts"), doc.get("kind"))
    return None


class RedeliverySkippingSink:
    """Publishes to Kafka, except records a crashed run had already written (see the module doc)."""

    def __init__(self, inner: KafkaRecordSink, already: set[Identity]) -> None:
        self.inner, self.already = inner, already
        self.skipped = 0

    def record(self, record: Record) -> None:
        if self._fresh(identity(record)):
            self.inner.record(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        if self._fresh(identity(letter)):
            self.inner.dead_letter(letter)

    def _fresh(self, ident: Identity) -> bool:
        if ident in self.already:
            self.skipped += 1
            return False
        return True

    def flush(self) -> None:
        self.inner.flush()


class TopicEnds:
    """End offsets of the output topics: recorded at each checkpoint, read from after a restart."""

    def __init__(self, cfg: KafkaConfig) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._tp = TopicPartition
        self.topics = [cfg.messages_topic, cfg.deadletter_topic]
        self.consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, group_id=None,
                                      enable_auto_commit=False, client_id=f"{cfg.client_id}-logs")

    def _partitions(self) -> list[Any]:
        return [self._tp(t, p) for t in self.topics for p in sorted(self.consumer.partitions_for_topic(t) or ())]

    def ends(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {t: {} for t in self.topics}
        for tp, end in self.consumer.end_offsets(self._partitions()).items():
            found[tp.topic][str(tp.partition)] = int(end)
        return found

    def written_since(self, saved: dict[str, dict[str, int]]) -> set[Identity]:
        """Identities of the records written to the topics after the saved end offsets."""
        tps = self._partitions()
        if not saved or not tps:
            return set()
        ends = self.consumer.end_offsets(tps)
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, saved.get(tp.topic, {}).get(str(tp.partition), 0))
        seen: set[Identity] = set()
        deadline = time.monotonic() + SCAN_TIMEOUT_S
        while any(self.consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading back {self.topics} took over {SCAN_TIMEOUT_S:.0f}s")
            for records in self.consumer.poll(timeout_ms=500).values():
                for rec in records:
                    ident = identity_of_dict(json.loads(rec.value))
                    if ident is not None and rec.offset < ends[self._tp(rec.topic, rec.partition)]:
                        seen.add(ident)
        self.consumer.unsubscribe()
        return seen

    def close(self) -> None:
        self.consumer.close()

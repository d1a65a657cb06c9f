"""Kafka adapters (kafka-python): topic set-up, a durable producer, record (de)serialisation.

Every record is JSON; the key is the stage's key (the charge point identity for the
messages topic), so all records of one charge point land in one partition, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from chargewatch.config import KafkaConfig
from chargewatch.errors import ServiceError
from chargewatch.model import KeyFn, Record, record_key
from collectors.stats import DeadLetter

LOG = logging.getLogger(__name__)


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("record is not a JSON object")
    return value


def ensure_topics(cfg: KafkaConfig, topics: Iterable[str]) -> None:
    """Create missing topics with cfg.partitions partitions (idempotent)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, client_id=f"{cfg.client_id}-admin")
    except KafkaError as exc:
        raise ServiceError(f"Kafka at {cfg.bootstrap_servers} unreachable: {exc}") from exc
    topics = list(topics)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(t, cfg.partitions, cfg.replication_factor) for t in topics if t not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
            _await_leaders(admin, topics)
    finally:
        admin.close()


#: How long ensure_topics waits for new topics' partitions to have leaders.
TOPIC_READY_S = 15.0


def _await_leaders(admin: Any, topics: list[str]) -> None:
    """Wait (bounded) until every partition of topics has a leader: a consumer group that forms
    before that is assigned nothing and would idle until its next metadata refresh."""
    deadline = time.monotonic() + TOPIC_READY_S
    while time.monotonic() < deadline:
        described = admin.describe_topics(topics)
        if len(described) == len(topics) and all(
                t["error_code"] == 0 and t["partitions"] and all(p["leader_id"] >= 0 for p in t["partitions"])
                for t in described):
            return
        time.sleep(0.1)
    LOG.warning("topics %s: partitions still without leaders after %.0f s", ", ".join(topics), TOPIC_READY_S)


def make_producer(cfg: KafkaConfig) -> Any:
    """A producer that only reports success once the broker has the record (acks=all)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(bootstrap_servers=cfg.bootstrap_servers, client_id=cfg.client_id, acks="all",
                             linger_ms=5, retries=5, max_in_flight_requests_per_connection=1,
                             key_serializer=lambda k: k.encode(), value_serializer=encode)
    except KafkaError as exc:
        raise ServiceError(f"Kafka at {cfg.bootstrap_servers} unreachable: {exc}") from exc


class DurableProducer:
    """Sends records; flush() returns only when every one is acknowledged (raises if any failed)."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.sent = 0
        self._futures: list[Any] = []

    def send(self, topic: str, key: str, value: dict[str, Any]) -> None:
        self._futures.append(self.producer.send(topic, key=key, value=value))
        self.sent += 1

    def pending(self) -> int:
        return len(self._futures)

    def flush(self) -> None:
        self.producer.flush()
        failed = [f for f in self._futures if f.failed()]
        self._futures.clear()
        if failed:
            raise ServiceError(f"Kafka refused {len(failed)} record(s): {failed[0].exception}")

    def close(self) -> None:
        self.producer.close()


class KafkaRecordSink:
    """Collector sink publishing records and dead letters to Kafka; flush() makes them durable."""

    def __init__(self, cfg: KafkaConfig, out: DurableProducer, key: KeyFn = record_key) -> None:
        self.cfg, self.out, self.key = cfg, out, key

    def record(self, record: Record) -> None:
        self._send(self.cfg.messages_topic, self.key(record), record.to_dict())

    def dead_letter(self, letter: DeadLetter) -> None:
        self._send(self.cfg.deadletter_topic, letter.charge_point_id or letter.source, letter.to_dict())

    def _send(self, topic: str, key: str, value: dict[str, Any]) -> None:
        self.out.send(topic, key, value)
        if self.out.pending() >= 10_000:
            self.out.flush()

    def flush(self) -> None:
        self.out.flush()

"""The detector stage on Kafka: a consumer group over the messages topic.

State is per charge point and the topic is keyed by charge point, so each process owns whole
charge points. When a partition is assigned, its state is rebuilt by replaying the retained
records before the committed offset with alerts suppressed; detector state therefore
survives any crash or rebalance, bounded by the topic's retention (keep the messages topic
retained at least as long as the longest detector window).
"""

from __future__ import annotations

import logging
from typing import Any

from chargewatch.alerts import Alert
from chargewatch.config import Config
from chargewatch.consumer import LoopStats, make_consumer, run_loop
from chargewatch.errors import DecodeError
from chargewatch.faults import FaultPoints
from chargewatch.kafkaio import DurableProducer, decode, ensure_topics, make_producer
from chargewatch.model import record_from_dict
from collectors.stats import DeadLetter
from detectors.runner import DetectorRunner

log = logging.getLogger(__name__)


class DetectorStage:
    """Consume records, run detectors, produce alerts to the alerts topic."""

    def __init__(self, config: Config, runner: DetectorRunner, producer: DurableProducer, faults: FaultPoints) -> None:
        self.cfg = config.kafka
        self.runner, self.producer, self.faults = runner, producer, faults
        self.consumer: Any = None
        self._cold: set[Any] = set()
        self._owner: dict[str, Any] = {}
        self.alerts = 0
        self.bad_records = 0

    def assigned(self, partitions: set[Any]) -> None:
        self._cold |= partitions

    def revoked(self, partitions: set[Any]) -> None:
        gone = [key for key, tp in self._owner.items() if tp in partitions]
        self.runner.drop(gone)
        for key in gone:
            del self._owner[key]
        self._cold -= partitions

    def handle(self, tp: Any, records: list[Any]) -> None:
        if tp in self._cold:
            self._warm(tp)
        for rec in records:
            for alert in self._process(tp, rec, emit=True):
                self._send(self.cfg.alerts_topic, alert.charge_point_id, alert.to_document())
                self.alerts += 1
                self.faults.hit("alert_sent")

    def _process(self, tp: Any, rec: Any, emit: bool) -> list[Alert]:
        try:
            record = record_from_dict(decode(rec.value))
        except (DecodeError, ValueError) as exc:
            if emit:
                self.bad_records += 1
                where = f"{rec.topic}/{rec.partition}@{rec.offset}"
                letter = DeadLetter.of(0.0, "bad_kafka_record", f"{where}: {exc}", where, rec.value or b"")
                self._send(self.cfg.deadletter_topic, where, letter.to_dict())
            return []
        self._owner[self.runner.key(record)] = tp
        return self.runner.process(record, emit=emit)

    def _warm(self, tp: Any) -> None:
        """Rebuild the state of tp's charge points from records before the committed offset."""
        self._cold.discard(tp)
        committed = self.consumer.committed(tp) if self.consumer is not None else None
        if not committed:
            return
        from kafka import KafkaConsumer

        reader = KafkaConsumer(bootstrap_servers=self.cfg.bootstrap_servers, group_id=None,
                               enable_auto_commit=False, client_id=f"{self.cfg.client_id}-warmup")
        try:
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            replayed = 0
            while reader.position(tp) < committed:
                for rec in reader.poll(timeout_ms=1000).get(tp, []):
                    if rec.offset < committed:
                        self._process(tp, rec, emit=False)
                        replayed += 1
            log.info("rebuilt state of %s from %d records before offset %d", tp, replayed, committed)
        finally:
            reader.close()

    def _send(self, topic: str, key: str, value: dict[str, Any]) -> None:
        self.producer.send(topic, key, value)

    def flush(self) -> None:
        had_alerts = self.producer.pending() > 0
        self.producer.flush()
        if had_alerts:
            self.faults.hit("alerts_flushed")


def run_detector(config: Config, runner: DetectorRunner, faults: FaultPoints,
                 idle_exit: float | None) -> tuple[LoopStats, DetectorStage]:
    """Run the detector stage until idle for idle_exit seconds (None: until interrupted)."""
    cfg = config.kafka
    ensure_topics(cfg, [cfg.messages_topic, cfg.alerts_topic, cfg.deadletter_topic])
    producer = DurableProducer(make_producer(cfg))
    stage = DetectorStage(config, runner, producer, faults)
    consumer = make_consumer(cfg, cfg.detector_group, config.detector.batch_size)
    stage.consumer = consumer
    try:
        stats = run_loop(consumer, cfg.messages_topic, stage, faults, idle_exit)
    finally:
        consumer.close(autocommit=False)
        producer.close()
    return stats, stage

"""The detector stages on Kafka: consumer groups over the messages and correlation topics.

The per-charge-point stage consumes the messages topic: state is per charge point and the
topic is keyed by charge point, so each process owns whole charge points. It also publishes
every record a correlation stage routes (see detectors/stages.py) to the correlation topic,
keyed ``"<stage>:<key>"``; those records go through the same durable producer as the alerts,
so they are acknowledged before the batch's offsets are committed. The correlation stage
(``--stage correlation``) consumes that topic in its own group, so each process owns whole
idTags / command actions.

The per-charge-point stage also publishes one session document per finished charging session
to ``[kafka] sessions_topic`` (when set), keyed by charge point, through the same producer: the
features, and the score and model version when CW-TX-006 is enabled. Documents have a
deterministic id downstream (charge point and transaction id), so a session published again
after a crash or a replay overwrites itself. When the stage stops idle (``--idle-exit``), the
sessions still waiting for their micro-batch are scored and published with their alerts.

When a partition is assigned, its state is rebuilt by replaying the retained records before
the committed offset with output suppressed; detector state therefore survives any crash or
rebalance, bounded by the topic's retention (keep both topics retained at least as long as
the longest detector window).
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
from chargewatch.model import Record, record_from_dict
from chargewatch.store.es_archive import session_document
from collectors.stats import DeadLetter
from detectors.model_scoring import Scored, end_of_input, scoring_detector
from detectors.stages import Stages

STAGES = ("charge_point", "correlation")

log = logging.getLogger(__name__)


class DetectorStage:
    """Consume records, run one stage's detectors, produce alerts to the alerts topic (and, for
    the per-charge-point stage, routed records to the correlation topic)."""

    def __init__(self, config: Config, stages: Stages, producer: DurableProducer, faults: FaultPoints,
                 stage: str = "charge_point") -> None:
        self.cfg = config.kafka
        self.stages, self.producer, self.faults, self.stage = stages, producer, faults, stage
        self.consumer: Any = None
        self._cold: set[Any] = set()
        self._owner: dict[tuple[str, str], Any] = {}  # (stage, key) -> partition
        self.alerts = 0
        self.forwarded = 0
        self.bad_records = 0
        self.sessions = 0
        scoring = scoring_detector(stages.local.runner.detectors) if stage == "charge_point" else None
        if scoring is not None and self.cfg.sessions_topic:
            scoring.on_scored = self._publish_sessions

    def assigned(self, partitions: set[Any]) -> None:
        self._cold |= partitions

    def revoked(self, partitions: set[Any]) -> None:
        gone = [key for key, tp in self._owner.items() if tp in partitions]
        if self.stage == "charge_point":
            self.stages.drop_charge_points(key for _, key in gone)
        else:
            self.stages.drop_keys(gone)
        for owned in gone:
            del self._owner[owned]
        self._cold -= partitions

    def handle(self, tp: Any, records: list[Any]) -> None:
        if tp in self._cold:
            self._warm(tp)
        for rec in records:
            self._publish_alerts(self._process(tp, rec, emit=True))

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            # A correlation storm's first occurrence (hence its charge point) may change as
            # late records arrive: key its versions by the alert id to keep them in order.
            key = alert.id if self.stage == "correlation" else alert.charge_point_id
            self._send(self.cfg.alerts_topic, key, alert.to_document())
            self.alerts += 1
            self.faults.hit("alert_sent")

    def _publish_sessions(self, batch: list[Scored]) -> None:
        """CW-TX-006's finished sessions (scored or not) to the sessions topic."""
        for scored in batch:
            self._send(self.cfg.sessions_topic, scored.row.charge_point_id, session_document(scored.as_dict()))
            self.sessions += 1

    def end_of_input(self) -> None:
        """The stage stops: score the sessions still waiting for their micro-batch, publish them
        and their alerts, and make it durable (their records' offsets are committed already)."""
        if self.stage == "charge_point":
            self._publish_alerts(end_of_input(self.stages.local.runner))
        self.flush()

    def _process(self, tp: Any, rec: Any, emit: bool) -> list[Alert]:
        try:
            record = record_from_dict(decode(rec.value))
            routed_to = _routed_key(rec.key) if self.stage == "correlation" else None
            if routed_to is not None and routed_to[0] not in self.stages.by_name:
                raise DecodeError(f"routed to correlation stage {routed_to[0]!r}, which this process does not run "
                                  f"(its rules are disabled here; running: {sorted(self.stages.by_name)})")
        except (DecodeError, ValueError) as exc:
            if emit:
                self.bad_records += 1
                where = f"{rec.topic}/{rec.partition}@{rec.offset}"
                letter = DeadLetter.of(0.0, "bad_kafka_record", f"{where}: {exc}", where, rec.value or b"")
                self._send(self.cfg.deadletter_topic, where, letter.to_dict())
            return []
        if routed_to is not None:
            return self._correlate(tp, routed_to, record, emit)
        local = self.stages.local.runner
        self._owner[("", local.key(record))] = tp
        alerts = local.process(record, emit=emit)
        for name, key, routed in self.stages.route(record):
            if emit:
                self._send(self.cfg.correlation_topic, f"{name}:{key}", routed.to_dict())
                self.forwarded += 1
        return alerts

    def _correlate(self, tp: Any, routed_to: tuple[str, str], record: Record, emit: bool) -> list[Alert]:
        """A routed record, run by the correlation stage its Kafka key names."""
        self._owner[routed_to] = tp
        alerts = self.stages.correlate(*routed_to, record, emit)
        for dropped in self.stages.sweep_due():
            self._owner.pop(dropped, None)
        return alerts

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


def run_detector(config: Config, stages: Stages, faults: FaultPoints, idle_exit: float | None,
                 stage_name: str = "charge_point") -> tuple[LoopStats, DetectorStage]:
    """Run one detector stage until idle for idle_exit seconds (None: until interrupted)."""
    cfg = config.kafka
    correlation = stage_name == "correlation"
    ensure_topics(cfg, [cfg.messages_topic, cfg.correlation_topic, cfg.alerts_topic, cfg.deadletter_topic,
                        *([cfg.sessions_topic] if cfg.sessions_topic and not correlation else [])])
    producer = DurableProducer(make_producer(cfg))
    stage = DetectorStage(config, stages, producer, faults, stage_name)
    consumer = make_consumer(cfg, cfg.correlation_group if correlation else cfg.detector_group,
                             config.detector.batch_size)
    stage.consumer = consumer
    try:
        stats = run_loop(consumer, cfg.correlation_topic if correlation else cfg.messages_topic, stage, faults,
                         idle_exit)
        stage.end_of_input()
    finally:
        consumer.close(autocommit=False)
        producer.close()
    return stats, stage


def _routed_key(raw: bytes | None) -> tuple[str, str]:
    """(stage, key) from a correlation record's Kafka key "<stage>:<key>"."""
    name, sep, key = (raw or b"").decode("utf-8", "replace").partition(":")
    if not sep or not name:
        raise DecodeError(f"correlation record without a '<stage>:<key>' key: {raw!r}")
    return name, key

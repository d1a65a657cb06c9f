"""The mirroring proxy's Kafka side: a bounded queue the relay appends to, a thread that drains it.

The relay (an asyncio event loop) must never wait for Kafka, so everything it does here is
O(1) and non-blocking: :meth:`Mirror.frame` and :meth:`Mirror.event` append to a bounded queue
and return. When the queue is full (by records or by bytes) the item is dropped and counted
(``queue_full``). One thread takes the items in order, decodes frames with the connection's
:class:`~collectors.frames.MessageBuilder` (the step every collector shares: OCPP-J decoding,
action inheritance, redaction) and sends the records to Kafka, keyed like every collector's.
kafka-python may block that thread (bootstrap, metadata: up to ``kafka_block_ms``), never the
relay. While Kafka is unreachable the thread keeps retrying and the queue holds what it can.

Every queued item ends exactly once as delivered, failed (``kafka_error``) or, at stop,
``unsent_at_stop``; drops are counted by reason and by kind (frame or connection event).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from chargewatch.catalog import Catalog
from chargewatch.config import KafkaConfig
from chargewatch.errors import ServiceError
from chargewatch.kafkaio import encode, ensure_topics
from chargewatch.model import ConnectionEvent, KeyFn, Record, key_function
from chargewatch.redaction import Redactor
from collectors.frames import DecodeContext, Endpoint, MessageBuilder
from collectors.stats import CollectorStats, DeadLetter

log = logging.getLogger(__name__)

RETRY_S = (0.5, 1.0, 2.0, 5.0)  # back-off between attempts to reach Kafka


@dataclass
class MirrorLink:
    """Mirroring state of one proxied connection.

    ``builder`` is only used by the mirror thread; ``dropped`` is raised by the relay when a frame
    of this connection could not be queued, and the thread reports the gap as a dead letter.
    """

    builder: MessageBuilder
    dropped: int = 0
    reported: int = 0


# ("frame", link, from_client, data, ts, binary, seq) or ("event", link or None, ConnectionEvent)
Item = tuple[Any, ...]


class _KafkaOut:
    """Collector sink onto one producer: same topics and keys as KafkaRecordSink, but asynchronous,
    with every outcome counted instead of raised (a mirror reports loss, it does not stop)."""

    def __init__(self, cfg: KafkaConfig, producer: Any, key: KeyFn, mirror: Mirror) -> None:
        self.cfg, self.producer, self.key, self.mirror = cfg, producer, key, mirror

    def record(self, record: Record) -> None:
        kind = "connection" if isinstance(record, ConnectionEvent) else "frame"
        self._send(self.cfg.messages_topic, self.key(record), record.to_dict(), kind)

    def dead_letter(self, letter: DeadLetter) -> None:
        self._send(self.cfg.deadletter_topic, letter.charge_point_id or letter.source, letter.to_dict(), "frame")

    def _send(self, topic: str, key: str, value: dict[str, Any], kind: str) -> None:
        from kafka.errors import KafkaError

        try:
            future = self.producer.send(topic, key=key.encode(), value=encode(value))
        except KafkaError as exc:  # e.g. KafkaTimeoutError: no metadata within kafka_block_ms
            self.mirror.drop("kafka_error", kind)
            log.warning("mirror: record not sent to %s: %s", topic, exc)
            return
        future.add_callback(self.mirror.delivered_one)
        future.add_errback(lambda _exc: self.mirror.drop("kafka_error", kind))


class Mirror:
    """Bounded queue → mirror thread → Kafka (see the module docstring).

    ``frame``/``event``/``open`` run on the relay's loop; ``start``/``close`` from the owner.
    """

    def __init__(self, kafka: KafkaConfig, redactor: Redactor, catalog: Catalog, *, source: str,
                 max_message: int, queue_records: int, queue_bytes: int, kafka_block_ms: int) -> None:
        self.kafka, self.kafka_block_ms = kafka, kafka_block_ms
        self.key = key_function(kafka.messages_key)
        self.stats = CollectorStats()
        self.ctx = DecodeContext(sink=self, stats=self.stats, redactor=redactor, catalog=catalog, source=source,
                                 max_message=max_message)
        self.queue_bytes = queue_bytes
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=queue_records)
        # Bytes queued = in - out; each counter is written by one thread only, so no lock is needed.
        self._bytes_in = self._bytes_out = 0
        self._drain_s = 0.0
        self._drops: Counter[str] = Counter()
        self._drops_by_kind: Counter[str] = Counter()
        self._lock = threading.Lock()  # counters raised from three threads (relay, mirror, producer)
        self.delivered = 0
        self.kafka_connected = False
        self._out: _KafkaOut | None = None
        self._stop = threading.Event()
        self._take = threading.Lock()  # taking an item vs. abandoning the queue at stop
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="proxy-mirror", daemon=True)

    # --- relay side (event loop): O(1), never blocks --------------------------------------

    def open(self, event: ConnectionEvent, client: Endpoint, server: Endpoint) -> MirrorLink:
        """A connection was upgraded: its link, and its upgrade event queued."""
        builder = MessageBuilder(self.ctx, event.connection_id, client, server)
        builder.cp_id = event.charge_point_id
        builder.negotiated(event.ocpp_version)
        link = MirrorLink(builder)
        self.event(event, link)
        return link

    def event(self, event: ConnectionEvent, link: MirrorLink | None = None) -> None:
        """Queue a connection event (upgrade, refused upgrade, closed)."""
        self._put(("event", link, event), 0, "connection")

    def frame(self, link: MirrorLink, from_client: bool, data: bytes, ts: float, binary: bool, seq: int) -> None:
        """Queue one relayed WebSocket message (data: its payload bytes)."""
        if not self._put(("frame", link, from_client, data, ts, binary, seq), len(data), "frame"):
            link.dropped += 1

    def _put(self, item: Item, size: int, kind: str) -> bool:
        if self._bytes_in - self._bytes_out + size > self.queue_bytes:
            self.drop("queue_full", kind)
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.drop("queue_full", kind)
            return False
        self._bytes_in += size
        return True

    # --- counters ---------------------------------------------------------------------------

    def drop(self, reason: str, kind: str) -> None:
        with self._lock:
            self._drops[reason] += 1
            self._drops_by_kind[kind] += 1

    def delivered_one(self, _metadata: object = None) -> None:
        with self._lock:
            self.delivered += 1

    def counters(self) -> dict[str, Any]:
        """Drops (total, by reason, by kind), queue depth, deliveries, decode errors."""
        with self._lock:
            drops, by_kind = dict(self._drops), dict(self._drops_by_kind)
        return {"drops": sum(drops.values()), "drops_by_reason": drops, "drops_by_kind": by_kind,
                "queue_depth": self._queue.qsize(), "queue_bytes": self._bytes_in - self._bytes_out,
                "delivered": self.delivered, "kafka_connected": self.kafka_connected,
                "messages": self.stats.messages, "errors": dict(self.stats.errors)}

    # --- Sink, for the builders (called on the mirror thread) -------------------------------

    def record(self, record: Record) -> None:
        assert self._out is not None
        self._out.record(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        assert self._out is not None
        self._out.dead_letter(letter)

    # --- mirror thread -----------------------------------------------------------------------

    def start(self) -> Mirror:
        self._thread.start()
        return self

    def close(self, timeout_s: float) -> None:
        """Stop: queued records get up to timeout_s to reach Kafka; what is left is counted as dropped."""
        self._drain_s = timeout_s
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 2 * self.kafka_block_ms / 1000 + 1)
        with self._take:
            self._abandoned = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                self.drop("unsent_at_stop", "frame" if item[0] == "frame" else "connection")

    def _run(self) -> None:
        attempt = 0
        while self._out is None and not self._stop.is_set():
            if self._connect():
                break
            self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
        if self._out is None:
            return  # stopped before Kafka was reached: close() counts the queue
        try:
            self._drain()
        finally:
            self._close_producer()

    def _connect(self) -> bool:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        cfg = self.kafka
        producer: Any = None
        try:
            # make_producer's settings plus bounds on every blocking call: this thread must stay
            # responsive to stop(), and the relay's loop never calls into the producer at all.
            producer = KafkaProducer(
                bootstrap_servers=cfg.bootstrap_servers, client_id=f"{cfg.client_id}-proxy", acks="all",
                linger_ms=5, retries=5, max_in_flight_requests_per_connection=1, max_block_ms=self.kafka_block_ms,
                bootstrap_timeout_ms=self.kafka_block_ms)
            ensure_topics(cfg, [cfg.messages_topic, cfg.deadletter_topic])  # the broker answered: bounded now
        except (KafkaError, ServiceError, OSError) as exc:
            if producer is not None:
                producer.close(timeout=0)
            log.warning("mirror: Kafka at %s unreachable (%s); retrying, records queue up to the bound",
                        cfg.bootstrap_servers, exc)
            return False
        self._out = _KafkaOut(cfg, producer, self.key, self)
        self.kafka_connected = True
        return True

    def _drain(self) -> None:
        deadline: float | None = None
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self._drain_s
            if deadline is not None and time.monotonic() > deadline:
                return  # close() counts what is left
            with self._take:
                if self._abandoned:
                    return
                try:
                    item = self._queue.get(timeout=0.1 if deadline is None else 0)
                except queue.Empty:
                    item = None
            if item is None:
                if deadline is not None:
                    return  # stopped and drained
                continue
            self._handle(item)

    def _handle(self, item: Item) -> None:
        if item[0] == "event":
            _, link, event = item
            if link is not None:
                self._report_gap(link, event.ts)
            self.stats.connection_events += 1
            self.record(event)
            return
        _, link, from_client, data, ts, binary, seq = item
        self._bytes_out += len(data)
        self._report_gap(link, ts)
        builder, source = link.builder, f"{self.ctx.source}#{seq}"
        self.stats.bytes += len(data)
        if len(data) > self.ctx.max_message:
            builder.dead(ts, "oversized_message", f"{len(data)} bytes > {self.ctx.max_message}", data, source)
            return
        builder.message(from_client, data, ts, source, len(data), ("binary_frame",) if binary else ())

    def _report_gap(self, link: MirrorLink, ts: float) -> None:
        """A dead letter telling downstream that frames of this connection are missing from the mirror."""
        missing = link.dropped - link.reported
        if missing > 0:
            link.reported += missing
            builder = link.builder
            self.dead_letter(DeadLetter.of(ts, "mirror_gap", f"{missing} frame(s) of this connection were relayed "
                                           "but not mirrored (queue full)", self.ctx.source, b"",
                                           builder.connection, builder.cp_id))

    def _close_producer(self) -> None:
        from kafka.errors import KafkaError

        assert self._out is not None
        producer = self._out.producer
        timeout = self.kafka_block_ms / 1000
        try:
            producer.flush(timeout=timeout)
        except KafkaError as exc:
            log.warning("mirror: flush at stop incomplete: %s", exc)
        producer.close(timeout=timeout)  # records still unacknowledged fail: counted as kafka_error
        self.kafka_connected = False

"""The spool's publisher: a separate process draining a spool directory into Kafka, exactly once.

The collector that owns a spool (proxy, live capture) starts it with
:class:`chargewatch.spool_output.PublisherProcess`, restarts it when it dies and reads its
counters from ``publisher.json`` in the spool directory.
Running apart, its Kafka client work never competes with the collector for the interpreter lock.

It sends the entries in spool order (``acks=all``) and, at least every ``CHECKPOINT_S`` while
there is progress, waits until Kafka acknowledged everything sent, records the topics' end
offsets and saves the checkpoint past the acknowledged entries; then it deletes the segments
before it. Before the first send of a spool it saves a checkpoint too, so there are always end
offsets to resume from. On start (and after a Kafka failure) it resumes at the checkpoint:
entries between it and the spool's end at that moment may already be in Kafka (sent by a
predecessor that died before its checkpoint), so it reads the topics from the recorded end
offsets (:meth:`chargewatch.resume.TopicEnds.written_since`) and skips every entry whose record
identity (:func:`chargewatch.resume.identity_of_dict`) is already there. A SIGKILL at any point
therefore leaves each spooled record in Kafka exactly once.

Protocol with the owner: the settings arrive as one JSON line on stdin; a later line ``drain``
(or SIGTERM) asks it to publish what is spooled, within ``drain_timeout_s``, and exit; end of
stdin without ``drain`` means the owner died, and it exits at once (its successor resumes). The
kernel also kills it when the owner dies (``PR_SET_PDEATHSIG``), so an orphan never holds the
publisher lock for long.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from chargewatch.config import KafkaConfig
from chargewatch.errors import ServiceError
from chargewatch.faults import FaultPoints
from chargewatch.kafkaio import decode
from chargewatch.resume import Identity, TopicEnds, identity_of_dict
from chargewatch.spool import (
    DEADLETTERS,
    PUBLISHER_LOCK,
    Checkpoint,
    Position,
    SpoolReader,
    delete_segments_before,
    hold_lock,
    load_checkpoint,
    pending_bytes,
    save_checkpoint,
    spool_end,
)

log = logging.getLogger("chargewatch.spool_publisher")

COUNTERS_FILE = "publisher.json"
CHECKPOINT_S = 1.0  # longest time between checkpoints while entries are being sent
MAX_UNACKED = 20_000  # entries sent before a checkpoint is forced
POLL_S = 0.05  # how often an idle publisher looks for new entries
FLUSH_TIMEOUT_S = 60.0
RETRY_S = (0.5, 1.0, 2.0, 5.0)
WARN_EVERY = 12  # while Kafka stays unreachable, one warning per this many attempts (~1 minute)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class PublisherSettings:
    """What a publisher process needs (sent to it as JSON)."""

    directory: str
    kafka: KafkaConfig
    kafka_block_ms: int = 5_000
    drain_timeout_s: float = 10.0
    kill_at: str | None = None  # crash tests: SIGKILL at the Nth sent, flushed or checkpointed
    owner_pid: int = 0  # the process that started it (0: do not check)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PublisherSettings:
        raw = json.loads(text)
        return cls(**(raw | {"kafka": KafkaConfig(**raw["kafka"])}))


class _Control:
    """Stop requests: drain (owner's ``drain`` line or SIGTERM) or orphaned (owner gone)."""

    def __init__(self, drain_timeout_s: float) -> None:
        self.drain_timeout_s = drain_timeout_s
        self.deadline: float | None = None
        self.orphaned = False
        self._wake = threading.Event()

    def watch(self, stream: Iterable[str]) -> None:
        for line in stream:
            if line.strip() == "drain":
                self.drain()
        if self.deadline is None:
            self.orphaned = True
            self._wake.set()

    def drain(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.drain_timeout_s
        self._wake.set()

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    @property
    def out_of_time(self) -> bool:
        return self.orphaned or (self.deadline is not None and time.monotonic() >= self.deadline)

    def wait(self, seconds: float) -> None:
        """Pause up to seconds; a stop request ends the pause (once: callers look at the state)."""
        self._wake.wait(seconds)
        self._wake.clear()


class _RetryError(Exception):
    """Kafka failed in a way a new session may fix (broker gone, timeout)."""


class Publisher:
    """Drains one spool directory into Kafka (see the module docstring)."""

    def __init__(self, settings: PublisherSettings, control: _Control) -> None:
        self.settings, self.control = settings, control
        self.directory = Path(settings.directory)
        self.faults = FaultPoints(settings.kill_at)
        self.checkpoint = load_checkpoint(self.directory)
        self.kafka_connected = False
        self.sessions = self.checkpoints = 0
        self.last_error = ""
        self._corrupt = 0
        self._counted_refusals: set[Position] = set()
        self._written = 0.0

    def run(self) -> None:
        """Publish until drained (or out of time, or orphaned); reconnects after Kafka failures."""
        attempt = 0
        while not self.control.out_of_time:
            try:
                if self._session():
                    break
                attempt = 0
            except _RetryError as exc:
                self.kafka_connected, self.last_error = False, str(exc)
                if attempt % WARN_EVERY == 0:  # the first failure of a streak, then about once a minute
                    log.warning("spool publisher: Kafka at %s: %s; retrying (records stay in the spool)",
                                self.settings.kafka.bootstrap_servers, exc)
                self.write_counters(force=True)
                self.control.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
        self.write_counters(force=True)

    def _session(self) -> bool:
        """One connection to Kafka; True once drained, False when stopped otherwise."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        from chargewatch.kafkaio import ensure_topics

        cfg, block = self.settings.kafka, self.settings.kafka_block_ms
        producer: Any = None
        ends: TopicEnds | None = None
        try:
            producer = KafkaProducer(bootstrap_servers=cfg.bootstrap_servers, client_id=f"{cfg.client_id}-spool",
                                     acks="all", linger_ms=5, retries=5, max_in_flight_requests_per_connection=1,
                                     max_block_ms=block, bootstrap_timeout_ms=block)
            ensure_topics(cfg, [cfg.messages_topic, cfg.deadletter_topic])
            ends = TopicEnds(cfg)
            self.sessions += 1
            if self.last_error:
                log.warning("spool publisher: Kafka at %s reachable again; publishing the spool", cfg.bootstrap_servers)
            self.kafka_connected, self.last_error = True, ""
            return _Session(self, producer, ends).run()
        except (KafkaError, ServiceError, OSError, TimeoutError) as exc:
            raise _RetryError(_describe(exc)) from exc
        finally:
            if producer is not None:
                producer.close(timeout=0 if self.control.orphaned else block / 1000)
            if ends is not None:
                ends.close()

    def save(self, checkpoint: Checkpoint) -> None:
        save_checkpoint(self.directory, checkpoint)
        self.checkpoint = checkpoint
        self.checkpoints += 1
        delete_segments_before(self.directory, checkpoint.segment)

    def write_counters(self, force: bool = False, reader: SpoolReader | None = None) -> None:
        """publisher.json, read by the owner for ``chargewatch status`` (at most once a second)."""
        now = time.monotonic()
        if not force and now - self._written < 1.0:
            return
        self._written = now
        if reader is not None:
            self._corrupt = reader.corrupt_tail
        cp = self.checkpoint
        doc = {"pid": os.getpid(), "updated": time.time(), "kafka_connected": self.kafka_connected,
               "delivered": cp.delivered, "redelivered_skipped": cp.skipped, "kafka_error": cp.refused,
               "corrupt_tail": self._corrupt, "sessions": self.sessions, "checkpoints": self.checkpoints,
               "position": list(cp.position), "pending_bytes": pending_bytes(self.directory, cp.position),
               "last_error": self.last_error}
        tmp = self.directory / (COUNTERS_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True))
        os.replace(tmp, self.directory / COUNTERS_FILE)


class _Session:
    """Publishing over one producer: resume at the checkpoint, send, checkpoint, until drained."""

    def __init__(self, owner: Publisher, producer: Any, ends: TopicEnds) -> None:
        self.owner, self.producer, self.ends = owner, producer, ends
        self.cfg = owner.settings.kafka
        self.topics = {DEADLETTERS: self.cfg.deadletter_topic}
        self.sent: list[tuple[Any, Position]] = []
        self.skipped = 0

    def run(self) -> bool:
        owner, control, directory = self.owner, self.owner.control, self.owner.directory
        checkpoint = owner.checkpoint = load_checkpoint(directory)
        if checkpoint.kafka is None:  # before the first send: where this spool's records begin
            checkpoint.kafka = self.ends.ends()
            owner.save(checkpoint)
        reader = SpoolReader(directory, checkpoint.position)
        window = spool_end(directory)  # entries before it may have been sent by a dead predecessor
        unsure = pending_bytes(directory, checkpoint.position) > 0
        already = self.ends.written_since(checkpoint.kafka) if unsure else set()
        position, last_checkpoint = reader.position, time.monotonic()
        while not control.orphaned:
            if control.out_of_time:  # drain deadline passed: checkpoint what Kafka has, the rest stays spooled
                if position > owner.checkpoint.position:
                    self._checkpoint(position)
                return False
            batch = reader.read()
            for entry in batch:
                if already and entry.start < window and self._in_kafka(entry.value, already):
                    self.skipped += 1
                else:
                    self._send(entry.topic, entry.key, entry.value, entry.start)
                    owner.faults.hit("sent")
                position = entry.end
            due = time.monotonic() - last_checkpoint >= CHECKPOINT_S or len(self.sent) >= MAX_UNACKED
            if position > owner.checkpoint.position and (due or (not batch and control.draining)):
                self._checkpoint(position)
                last_checkpoint = time.monotonic()
            owner.write_counters(reader=reader)
            if not batch:
                if control.draining and reader.at_end():
                    return True
                control.wait(POLL_S)
        return False

    @staticmethod
    def _in_kafka(value: bytes, already: set[Identity]) -> bool:
        try:
            return identity_of_dict(decode(value)) in already
        except ValueError:
            return False

    def _send(self, topic: bytes, key: bytes, value: bytes, start: Position) -> None:
        from kafka.errors import KafkaError

        try:
            future = self.producer.send(self.topics.get(topic, self.cfg.messages_topic), key=key, value=value)
        except KafkaError as exc:
            if exc.retriable:
                raise _RetryError(f"send: {_describe(exc)}") from exc
            self._refused(start, exc)
            return
        self.sent.append((future, start))

    def _refused(self, start: Position, exc: BaseException) -> None:
        """A record Kafka will never take (e.g. larger than the broker allows): counted, logged, passed."""
        owner = self.owner
        if start not in owner._counted_refusals:
            owner._counted_refusals.add(start)
            owner.checkpoint.refused += 1
            log.error("spool publisher: Kafka refused the record at %s of %s: %s", start, owner.directory, exc)

    def _checkpoint(self, position: Position) -> None:
        """Wait for Kafka's acknowledgements, then save the checkpoint at position."""
        from kafka.errors import KafkaError

        owner = self.owner
        try:
            self.producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as exc:
            raise _RetryError(f"flush: {_describe(exc)}") from exc
        delivered = 0
        for future, start in self.sent:
            if not future.failed():
                delivered += 1
            elif getattr(future.exception, "retriable", True):
                raise _RetryError(f"record not acknowledged: {future.exception}")
            else:
                self._refused(start, future.exception)
        if self.sent:
            owner.faults.hit("flushed")
        self.sent.clear()
        previous = owner.checkpoint
        owner.save(Checkpoint(position[0], position[1], self.ends.ends(), previous.delivered + delivered,
                              previous.skipped + self.skipped, previous.refused))
        self.skipped = 0
        owner.faults.hit("checkpointed")


def _describe(exc: BaseException) -> str:
    """The exception's class and message (kafka-python's messages often start with the class already)."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def _die_with_owner(owner_pid: int) -> None:
    """Be killed by the kernel when the owner dies (Linux PR_SET_PDEATHSIG): an orphan must not
    hold the publisher lock its owner's successor waits for. Exits if the owner is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if owner_pid and os.getppid() != owner_pid:
        sys.exit(1)


def serve(stdin: IO[str]) -> int:
    """The publisher process: settings from the first line of stdin, then run until told to stop."""
    settings = PublisherSettings.from_json(stdin.readline())
    _die_with_owner(settings.owner_pid)
    control = _Control(settings.drain_timeout_s)
    signal.signal(signal.SIGTERM, lambda *_: control.drain())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when to stop
    threading.Thread(target=control.watch, args=(stdin,), name="owner-watch", daemon=True).start()

    def waiting() -> bool:  # a predecessor still holds the lock: it is on its way out
        control.wait(0.1)
        return not control.out_of_time

    try:
        fd = hold_lock(Path(settings.directory) / PUBLISHER_LOCK, waiting)
    except ServiceError as exc:  # stopped while a predecessor still held the lock
        log.warning("spool publisher: %s; not started", exc)
        return 1
    try:
        Publisher(settings, control).run()
    finally:
        os.close(fd)
    return 0


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the publisher reports Kafka trouble itself
    return serve(sys.stdin)


if __name__ == "__main__":
    sys.exit(main())

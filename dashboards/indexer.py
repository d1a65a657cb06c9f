"""The indexer stage: Kafka → Elasticsearch, bulk-written, offsets committed after.

Three consume loops, run by one process (``chargewatch index``, ``--what all``) or by separate
ones (``--what alerts`` / ``messages`` / ``sessions``):

- **alerts**: the alerts topic into the alerts index (consumer group ``[kafka] indexer_group``).
  Alerts keep their deterministic id, so a crash re-indexes at most one batch and duplicates
  nothing; triage set by people is carried over.
- **archive**: the messages topic into the message archive and the asset inventory (group
  ``<indexer_group>-archive``). Records keep their identity as id, so redelivery overwrites
  nothing and counts nothing twice.
- **sessions**: the sessions topic (one document per finished charging session, published by
  the detector stage) into ``<prefix>-transactions`` (group ``<indexer_group>-sessions``). The
  document id comes from charge point and transaction id, so a session indexed again replaces
  itself (a later score of the same session included).

Each loop commits a batch's offsets only after its bulk write returned (Elasticsearch
acknowledges a write once it is in its translog). Both add the charge point's site from the
operator policy (``[detector] policy_file``). Records that are not Chargewatch records are
counted and logged with topic/partition/offset (the detector stage dead-letters them). A
background thread runs the retention sweep every ``[elasticsearch] retention_sweep_interval_s``.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from chargewatch.alerts import Alert
from chargewatch.config import Config
from chargewatch.consumer import LoopStats, make_consumer, run_loop
from chargewatch.errors import ConfigError, DecodeError
from chargewatch.faults import FaultPoints
from chargewatch.kafkaio import ensure_topics
from chargewatch.model import Record, record_from_dict
from chargewatch.store.elastic import ElasticAlertStore
from chargewatch.store.es_archive import session_row
from chargewatch.store.es_retention import RetentionSweeper
from detectors.policy import Policy, load_policy

log = logging.getLogger(__name__)
T = TypeVar("T")

WHAT = ("all", "alerts", "messages", "sessions")
BATCH = 1_000
ARCHIVE_POINT = "records_archived"  # fault point of the archive loop (crash tests)
SESSIONS_POINT = "sessions_indexed"  # fault point of the sessions loop
#: What a session document must name to be indexed (its id and time come from them).
SESSION_KEYS = ("charge_point_id", "transaction_id", "start", "end")


class Sites:
    """Charge point id -> site name from the operator policy, cached (globs are matched once)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._known: dict[str, str | None] = {}

    def of(self, cp_ids: Iterable[str | None]) -> dict[str, str]:
        out: dict[str, str] = {}
        for cp_id in cp_ids:
            if not cp_id:
                continue
            if cp_id not in self._known:
                site = self.policy.site_of(cp_id)
                self._known[cp_id] = site.name if site else None
            name = self._known[cp_id]
            if name:
                out[cp_id] = name
        return out


class _BufferingStage(ABC, Generic[T]):
    """One consumer loop's stage: parses each Kafka record into a batch (what does not parse is
    counted and logged, never fatal) and writes the batch on flush (subclasses say how)."""

    what = "record"  # for the log line of a record that does not parse
    errors: tuple[type[Exception], ...] = (ValueError, TypeError)

    def __init__(self, store: ElasticAlertStore, faults: FaultPoints, sites: Sites) -> None:
        self.store, self.faults, self.sites = store, faults, sites
        self._batch: list[T] = []
        self.bad_records = 0

    def assigned(self, partitions: set[Any]) -> None:
        return None

    def revoked(self, partitions: set[Any]) -> None:
        return None

    @abstractmethod
    def parse(self, value: bytes) -> T:
        """One Kafka record value as what this stage writes (raises one of ``errors`` if it is not)."""

    def handle(self, tp: Any, records: list[Any]) -> None:
        for rec in records:
            try:
                self._batch.append(self.parse(rec.value))
            except self.errors as exc:
                self.bad_records += 1
                log.error("%s/%s@%s: not %s, skipped: %s", rec.topic, rec.partition, rec.offset, self.what, exc)

    def take(self) -> list[T]:
        batch, self._batch = self._batch, []
        return batch


class IndexerStage(_BufferingStage[Alert]):
    """Buffers a batch of alerts and stores them on flush."""

    what = "an alert document"
    errors = (ValueError, KeyError, TypeError)

    def __init__(self, store: ElasticAlertStore, faults: FaultPoints, sites: Sites) -> None:
        super().__init__(store, faults, sites)
        self.indexed = 0

    def parse(self, value: bytes) -> Alert:
        return Alert.from_document(json.loads(value))

    def flush(self) -> None:
        batch = self.take()
        self.indexed += self.store.put_alerts(batch, sites=self.sites.of(a.charge_point_id for a in batch))
        self.faults.hit("alerts_indexed")


class ArchiveStage(_BufferingStage[Record]):
    """Buffers a batch of records and archives them (with the asset updates) on flush."""

    what = "a Chargewatch record"
    errors = (DecodeError, ValueError, TypeError, AttributeError)

    def __init__(self, store: ElasticAlertStore, faults: FaultPoints, sites: Sites) -> None:
        super().__init__(store, faults, sites)
        self.archived = 0

    def parse(self, value: bytes) -> Record:
        return record_from_dict(json.loads(value))

    def flush(self) -> None:
        batch = self.take()
        self.archived += self.store.put_records(batch, self.sites.of(r.charge_point_id for r in batch))
        self.faults.hit(ARCHIVE_POINT)


class SessionsStage(_BufferingStage[dict[str, Any]]):
    """Buffers a batch of session documents and indexes them on flush."""

    what = "a session document"
    errors = (ValueError, KeyError, TypeError)

    def __init__(self, store: ElasticAlertStore, faults: FaultPoints, sites: Sites) -> None:
        super().__init__(store, faults, sites)
        self.indexed = 0

    def parse(self, value: bytes) -> dict[str, Any]:
        doc = json.loads(value)
        if not isinstance(doc, dict):
            raise TypeError(f"a {type(doc).__name__}, not an object")
        row = session_row(doc)
        missing = [key for key in SESSION_KEYS if key not in row]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        return row

    def flush(self) -> None:
        self.indexed += self.store.put_sessions(self.take())
        self.faults.hit(SESSIONS_POINT)


@dataclass
class IndexerRun:
    """What ``chargewatch index`` did, per loop."""

    alerts: tuple[LoopStats, IndexerStage] | None = None
    archive: tuple[LoopStats, ArchiveStage] | None = None
    sessions: tuple[LoopStats, SessionsStage] | None = None
    sweeps: int = 0
    sweep_failures: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.alerts:
            stats, alerts = self.alerts
            parts.append(f"alerts: {stats.records} records in {stats.batches} batches, {alerts.indexed} written, "
                         f"{alerts.bad_records} bad records")
        if self.archive:
            stats, archive = self.archive
            parts.append(f"archive: {stats.records} records in {stats.batches} batches, {archive.archived} new, "
                         f"{archive.bad_records} bad records")
        if self.sessions:
            stats, sessions = self.sessions
            parts.append(f"sessions: {stats.records} records in {stats.batches} batches, {sessions.indexed} written, "
                         f"{sessions.bad_records} bad records")
        parts.append(f"retention sweeps: {self.sweeps} ({self.sweep_failures} failed)")
        return "indexer: " + "; ".join(parts)


def fault_points(spec: str | None, loop: str, what: str) -> FaultPoints:
    """The crash-test points of one loop: the archive loop owns ``records_archived`` (and, alone
    with ``--what messages``, the consume loop's points), the sessions loop ``sessions_indexed``
    (and the consume loop's points with ``--what sessions``); the alerts loop owns the rest."""
    point = spec.partition(":")[0] if spec else None
    owner = ("archive" if point == ARCHIVE_POINT or what == "messages" else
             "sessions" if point == SESSIONS_POINT or what == "sessions" else "alerts")
    return FaultPoints(spec if loop == owner else None)


def run_indexer(config: Config, store: ElasticAlertStore, kill_at: str | None, idle_exit: float | None,
                what: str = "all") -> IndexerRun:
    """Run the chosen loops until each has been idle for idle_exit seconds (None: until
    interrupted), with the retention sweep in the background. Raises the first loop's error."""
    cfg = config.kafka
    fault_points(kill_at, "alerts", what)  # validate the spec before anything starts
    wanted = {"alerts": what in ("all", "alerts"), "messages": what in ("all", "messages"),
              "sessions": what in ("all", "sessions") and bool(cfg.sessions_topic)}
    if what == "sessions" and not cfg.sessions_topic:
        raise ConfigError("index --what sessions: [kafka] sessions_topic is empty (no sessions are published)")
    topics = [t for t, on in ((cfg.alerts_topic, wanted["alerts"]), (cfg.messages_topic, wanted["messages"]),
                              (cfg.sessions_topic, wanted["sessions"])) if on]
    ensure_topics(cfg, topics)
    store.setup()
    policy_file = config.detector.policy_file
    sites = Sites(load_policy(Path(policy_file).expanduser() if policy_file else None))
    run = IndexerRun()
    stop = threading.Event()
    loops: list[Callable[[], None]] = []
    if wanted["alerts"]:
        alerts = IndexerStage(store, fault_points(kill_at, "alerts", what), sites)
        loops.append(lambda: _loop(config, cfg.indexer_group, cfg.alerts_topic, alerts, idle_exit, stop,
                                   lambda s: setattr(run, "alerts", (s, alerts))))
    if wanted["messages"]:
        archive = ArchiveStage(store, fault_points(kill_at, "archive", what), sites)
        loops.append(lambda: _loop(config, f"{cfg.indexer_group}-archive", cfg.messages_topic, archive, idle_exit,
                                   stop, lambda s: setattr(run, "archive", (s, archive))))
    if wanted["sessions"]:
        sessions = SessionsStage(store, fault_points(kill_at, "sessions", what), sites)
        loops.append(lambda: _loop(config, f"{cfg.indexer_group}-sessions", cfg.sessions_topic, sessions, idle_exit,
                                   stop, lambda s: setattr(run, "sessions", (s, sessions))))
    sweeper = RetentionSweeper(store.sweep, config.elasticsearch.retention_sweep_interval_s)
    sweeper.start()
    try:
        _run_all(loops, stop, run)
    finally:
        sweeper.stop()
        run.sweeps, run.sweep_failures = sweeper.sweeps, sweeper.failures
    if run.errors:
        raise run.errors[0]
    return run


def _loop(config: Config, group: str, topic: str, stage: IndexerStage | ArchiveStage | SessionsStage,
          idle_exit: float | None,
          stop: threading.Event, done: Callable[[LoopStats], None]) -> None:
    consumer = make_consumer(config.kafka, group, BATCH)
    try:
        done(run_loop(consumer, topic, stage, stage.faults, idle_exit, should_stop=stop.is_set))
    finally:
        consumer.close(autocommit=False)


def _run_all(loops: list[Callable[[], None]], stop: threading.Event, run: IndexerRun) -> None:
    """Run each loop in its own thread; the first failure stops the others."""

    def guarded(loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # re-raised in the caller's thread by run_indexer
            run.errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(loop,), name=f"indexer-{i}") for i, loop in enumerate(loops)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        for thread in threads:
            thread.join()
        raise

"""A collector's output to Kafka through a durable spool: the owner's side of :mod:`chargewatch.spool`.

The proxy and live capture build records and hand them to :class:`SpooledOutput`, which appends
each one to the spool (:class:`SpoolSink`: one ``write(2)``, never a wait for Kafka) and keeps a
publisher process (:mod:`chargewatch.spool_publisher`) running that drains the spool into Kafka
exactly once. The publisher is restarted whenever it dies; at stop the writer is closed and the
publisher gets ``drain_timeout_s`` to publish what is spooled. What it could not publish stays
in the spool for the next start: nothing built is lost by a stop or a crash of either process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from chargewatch.config import KafkaConfig
from chargewatch.kafkaio import encode
from chargewatch.model import ConnectionEvent, KeyFn, Record, key_function
from chargewatch.spool import DEADLETTERS, MESSAGES, SpoolWriter, disk_bytes, load_checkpoint, pending_bytes
from chargewatch.spool_publisher import COUNTERS_FILE, RETRY_S, PublisherSettings
from collectors.stats import DeadLetter

log = logging.getLogger(__name__)

STARTUP_S = 10.0  # allowance for a publisher process that is still starting when asked to drain
ROOT = Path(__file__).resolve().parent.parent  # the checkout holding chargewatch/ and collectors/


def default_spool_dir(status_dir: str, name: str) -> Path:
    """Where a collector named name spools when not configured: ``<status_dir>/../spool/<name>``."""
    return Path(status_dir).expanduser().parent / "spool" / name


class SpoolSink:
    """Collector sink that appends records and dead letters to a spool, with the keys
    :class:`chargewatch.kafkaio.KafkaRecordSink` uses; refused entries are counted by kind."""

    def __init__(self, writer: SpoolWriter, key: KeyFn) -> None:
        self.writer, self.key = writer, key
        self.dropped: Counter[str] = Counter()  # refused appends by kind: message, connection, deadletter
        self.last_ok = True

    def record(self, record: Record) -> None:
        self.last_ok = self.writer.append(MESSAGES, self.key(record), encode(record.to_dict()))
        if not self.last_ok:
            self.dropped["connection" if isinstance(record, ConnectionEvent) else "message"] += 1

    def dead_letter(self, letter: DeadLetter) -> None:
        self.last_ok = self.writer.append(DEADLETTERS, letter.charge_point_id or letter.source,
                                          encode(letter.to_dict()))
        if not self.last_ok:
            self.dropped["deadletter"] += 1

    def flush(self) -> None:
        """Nothing to do: every append already reached the operating system."""


class SpooledOutput:
    """Spool writer + sink + publisher process for one collector (see the module docstring)."""

    def __init__(self, kafka: KafkaConfig, directory: Path, *, max_bytes: int, fsync_interval_s: float,
                 kafka_block_ms: int, drain_timeout_s: float, kill_at: str | None = None) -> None:
        self.directory = directory.expanduser()
        self.writer = SpoolWriter(self.directory, max_bytes, fsync_interval_s)
        self.sink = SpoolSink(self.writer, key_function(kafka.messages_key))
        self.publisher = PublisherProcess(PublisherSettings(str(self.directory), kafka, kafka_block_ms,
                                                            drain_timeout_s, kill_at))

    def start(self) -> SpooledOutput:
        self.publisher.start()
        return self

    def close(self) -> None:
        """No more appends; the publisher drains what it can in drain_timeout_s, the rest stays spooled."""
        self.writer.close()
        self.publisher.stop()

    def counters(self) -> dict[str, Any]:
        """Drops by reason and by kind, the spool, and the publisher's deliveries, for ``chargewatch status``."""
        writer, published = self.writer, self.publisher.counters()
        position = load_checkpoint(self.directory).position
        return {"drops": {"spool_full": writer.full, "spool_write_error": writer.errors,
                          "kafka_error": int(published.get("kafka_error", 0))},
                "drops_by_kind": dict(self.sink.dropped),
                "spool": {"dir": str(self.directory), "spooled": writer.appended, "bytes": disk_bytes(self.directory),
                          "pending_bytes": pending_bytes(self.directory, position), "max_bytes": writer.max_bytes,
                          "corrupt_tail": writer.corrupt_tail + int(published.get("corrupt_tail", 0))},
                "delivered": int(published.get("delivered", 0)),
                "redelivered_skipped": int(published.get("redelivered_skipped", 0)),
                "kafka_connected": published["kafka_connected"],
                "publisher": {k: published.get(k) for k in ("pid", "restarts", "sessions", "checkpoints",
                                                             "last_error")}}


class PublisherProcess:
    """The owner's side: runs ``python -m chargewatch.spool_publisher`` for one spool, starts a new
    one whenever it dies (``restarts``), and at stop asks it to drain (see the module docstring)."""

    def __init__(self, settings: PublisherSettings) -> None:
        self.settings, self.directory = settings, Path(settings.directory)
        self.restarts = 0
        self.proc: subprocess.Popen[str] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="spool-publisher-watch", daemon=True)

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> PublisherProcess:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the publisher to drain the spool (the writer must be closed), wait for it, at worst kill it."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _spawn(self, kill_at: str | None) -> subprocess.Popen[str]:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "chargewatch.spool_publisher"], stdin=subprocess.PIPE,
                                text=True, start_new_session=True, env=os.environ | {"PYTHONPATH": path})
        with contextlib.suppress(OSError):  # it died at once: the watcher sees it exit and starts another
            assert proc.stdin is not None
            proc.stdin.write(replace(self.settings, kill_at=kill_at, owner_pid=os.getpid()).to_json() + "\n")
            proc.stdin.flush()
        return proc

    def _watch(self) -> None:
        """Spawned from this thread, which lives as long as the publisher it watches."""
        attempt, kill_at = 0, self.settings.kill_at
        while not self._stopping.is_set():
            started = time.monotonic()
            self.proc = proc = self._spawn(kill_at)
            kill_at = None  # a crash test kills the first publisher only
            while proc.poll() is None and not self._stopping.wait(0.2):
                pass
            if proc.poll() is None:
                break
            _close_stdin(proc)
            self.restarts += 1
            attempt = 0 if time.monotonic() - started > 30 else attempt + 1
            log.warning("spool publisher of %s (pid %d) exited with status %s; starting a new one",
                        self.directory, proc.pid, proc.returncode)
            self._stopping.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
        last = self.proc
        if last is None or last.poll() is not None:  # it died: one more publisher drains the spool
            self.proc = last = self._spawn(None)
        self._drain(last)

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        """Tell the publisher to drain and exit; kill it if it overstays its drain time."""
        settings = self.settings
        if proc.poll() is None:
            with contextlib.suppress(OSError):  # BrokenPipeError: it is exiting anyway
                assert proc.stdin is not None
                proc.stdin.write("drain\n")
                proc.stdin.flush()
            try:
                proc.wait(settings.drain_timeout_s + 2 * settings.kafka_block_ms / 1000 + STARTUP_S)
            except subprocess.TimeoutExpired:
                log.warning("spool publisher (pid %d) did not stop in time; killed (the spool keeps its records)",
                            proc.pid)
                proc.kill()
                proc.wait()
        _close_stdin(proc)

    def counters(self) -> dict[str, Any]:
        """The publisher's last counters (publisher.json), with restarts and whether it runs now."""
        try:
            doc: dict[str, Any] = json.loads((self.directory / COUNTERS_FILE).read_text())
        except (OSError, ValueError):
            doc = {}
        pid = self.pid
        doc["kafka_connected"] = bool(doc.get("kafka_connected")) and pid is not None and doc.get("pid") == pid
        return doc | {"pid": pid, "restarts": self.restarts}


def _close_stdin(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()

"""``chargewatch collect logs``: tail a central system's OCPP message logs into Kafka.

Restarts neither lose nor duplicate a line. The state file's offset of a path is saved only
after the Kafka producer acknowledged (``DurableProducer.flush``) the records of every line
before it, so a crash re-reads at most the lines after the last checkpoint. Some of their
records may have reached Kafka (sent, not yet acknowledged); the checkpoint therefore also
records the end offsets of the messages and dead-letter topics, and a restart first reads the
records written since then and skips re-sending any record already there. A record's identity
is its source (``file#byte offset`` of its line), kind, time and (for messages) direction,
type and message id.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from chargewatch.catalog import load_catalog
from chargewatch.config import Config, resolve_redaction_key
from chargewatch.faults import FaultPoints
from chargewatch.kafkaio import DurableProducer, KafkaRecordSink, ensure_topics, make_producer
from chargewatch.model import key_function
from chargewatch.redaction import Redactor
from chargewatch.resume import RedeliverySkippingSink, TopicEnds
from chargewatch.status import StatusWriter
from collectors.frames import DecodeContext
from collectors.logformats import FORMATS
from collectors.logs import LogCollector, check_format, load_state, save_state
from collectors.stats import CollectorStats

CHECKPOINT_EVERY_S = 1.0

log = logging.getLogger(__name__)


def add_parser(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = kinds.add_parser("logs", help="tail OCPP message logs of a central system",
                         description="Follow OCPP message logs (JSON lines, the ocpp library's log, SteVe) and "
                                     "publish their messages; rotation, truncation and restarts are handled "
                                     "(offsets in --state-file).")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--format", choices=("auto", *FORMATS), default=None,
                   help="log format (default: [collector] input_format; auto recognises each line)")
    p.add_argument("--state-file", type=Path, default=None,
                   help="offsets and connection state (default: <status_dir>/logs-<status-name>.state.json)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--follow", dest="follow", action="store_true", default=True,
                      help="keep following appends, rotation and truncation (default)")
    mode.add_argument("--once", dest="follow", action="store_false",
                      help="read what is there, save the state and exit (an unfinished last line waits)")
    p.add_argument("--status-name", default="default", help="counters go to <status_dir>/logs-NAME.json")
    p.add_argument("--batch-bytes", type=int, default=8 << 20,
                   help="bytes read per file between checkpoints at most")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S",
                   help="--follow: stop after S seconds without a new line")
    p.add_argument("--stats-json", type=Path, help="write counters here as JSON when stopping")
    p.add_argument("--kill-at", default=None, metavar="POINT:N",
                   help="crash tests: SIGKILL at the Nth lines_sent, flushed or state_saved")
    p.set_defaults(run=run_logs)


def run_logs(args: argparse.Namespace, config: Config) -> int:
    cfg = config.kafka
    fmt = check_format(args.format or (config.collector.input_format if config.collector.input_format != "pcap"
                                       else "auto"), allow_pcap=False)
    status_dir = Path(config.collector.status_dir).expanduser()
    state_path = args.state_file or status_dir / f"logs-{args.status_name}.state.json"
    saved = load_state(state_path)
    faults = FaultPoints(args.kill_at)
    ensure_topics(cfg, [cfg.messages_topic, cfg.deadletter_topic])
    ends = TopicEnds(cfg)
    out = DurableProducer(make_producer(cfg))
    try:
        sink = RedeliverySkippingSink(KafkaRecordSink(cfg, out, key_function(cfg.messages_key)),
                                      ends.written_since(saved.get("kafka", {})))
        stats = CollectorStats()
        redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
        ctx = DecodeContext(sink=sink, stats=stats, redactor=redactor, catalog=load_catalog(), source="logs",
                            max_message=config.collector.max_message_bytes)
        collector = LogCollector(args.paths, ctx, fmt, config.collector, saved)
        loop = _Loop(collector, sink, ends, state_path, faults, args.batch_bytes)
        writer = StatusWriter(status_dir, f"logs-{args.status_name}", "logs", loop.snapshot)
        with writer:
            loop.run(args.follow, config.collector.log_poll_interval_s, args.idle_exit)
        collector.close()
    finally:
        out.close()
        ends.close()
    print(f"published {out.sent} records ({stats.messages} messages, {stats.error_total} dead letters) from "
          f"{collector.lines} lines; {sink.skipped} already in Kafka after a restart", file=sys.stderr)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(loop.snapshot() | {"published": out.sent}, indent=1) + "\n")
    return 0


class _Loop:
    """Poll, publish, checkpoint; in follow mode until stopped (SIGTERM/SIGINT) or idle."""

    def __init__(self, collector: LogCollector, sink: RedeliverySkippingSink, ends: TopicEnds, state_path: Path,
                 faults: FaultPoints, batch_bytes: int) -> None:
        self.collector, self.sink, self.ends, self.state_path = collector, sink, ends, state_path
        self.faults, self.batch_bytes = faults, batch_bytes
        self.stop = threading.Event()
        self.bytes = 0
        self.checkpoints = 0

    def run(self, follow: bool, poll_s: float, idle_exit: float | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        last_line, last_checkpoint, dirty = time.monotonic(), 0.0, False
        while not self.stop.is_set():
            read = self.collector.poll(self.batch_bytes)
            self.bytes += read
            now = time.monotonic()
            if read:
                last_line, dirty = now, True
                self.faults.hit("lines_sent")
            if dirty and (not read or not follow or now - last_checkpoint >= CHECKPOINT_EVERY_S):
                self.checkpoint()
                last_checkpoint, dirty = now, False
            if not read:
                if not follow or (idle_exit is not None and now - last_line >= idle_exit):
                    break
                self.stop.wait(poll_s)
        if dirty or self.checkpoints == 0:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Make every record handed to Kafka durable, then save the offsets past their lines."""
        self.sink.flush()
        self.faults.hit("flushed")
        state = self.collector.state() | {"kafka": self.ends.ends(), "saved_at": time.time()}
        save_state(self.state_path, state)
        self.checkpoints += 1
        self.faults.hit("state_saved")

    def snapshot(self) -> dict[str, Any]:
        stats = self.collector.tails[0].decoder.ctx.stats if self.collector.tails else CollectorStats()
        return {"frames": self.collector.lines, "messages": stats.messages, "bytes": self.bytes,
                "errors": stats.error_total, "drops": 0,
                "details": {"errors": dict(stats.errors), "ignored": dict(stats.ignored),
                            "files": dict(self.collector.events()), "redelivered_skipped": self.sink.skipped,
                            "checkpoints": self.checkpoints}}

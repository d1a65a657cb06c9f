"""``chargewatch collect pcap``: publish the OCPP messages of captures to Kafka.

With ``--state-file`` the run keeps a ledger: files published completely (same path, size
and modification time) are skipped when they come again, and a file a crash interrupted is
read again with every record that already reached Kafka skipped (see chargewatch.resume), so
a restart neither loses nor duplicates a record. A capture is read from its start each time
(TCP reassembly needs the whole stream), but only what Kafka lacks is published.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chargewatch.catalog import load_catalog
from chargewatch.cli import collect_logs
from chargewatch.cli.collect_live import add_live_parser
from chargewatch.config import Config, resolve_redaction_key
from chargewatch.errors import CaptureError
from chargewatch.faults import FaultPoints
from chargewatch.kafkaio import DurableProducer, KafkaRecordSink, ensure_topics, make_producer
from chargewatch.model import Record, key_function
from chargewatch.redaction import Redactor
from chargewatch.resume import RedeliverySkippingSink, TopicEnds
from collectors.logs import load_state, save_state
from collectors.pcap import read_capture
from collectors.stats import CollectorStats, DeadLetter


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("collect", help="publish OCPP traffic to Kafka",
                       description="Collect OCPP messages and connection events into the Kafka messages "
                                   "topic (keyed by charge point), dead letters into the dead-letter topic.")
    kinds = p.add_subparsers(dest="source", required=True)
    pcap = kinds.add_parser("pcap", help="read pcap/pcapng files",
                            description="Publish the OCPP messages of capture files.")
    pcap.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    pcap.add_argument("--stats-json", type=Path, help="write counters here as JSON")
    pcap.add_argument("--state-file", type=Path, default=None,
                      help="ledger of published files: skip files already published, resume an interrupted one "
                           "without duplicates")
    pcap.add_argument("--kill-at", default=None, metavar="POINT:N",
                      help="crash tests: SIGKILL at the Nth record_sent or file_done")
    pcap.set_defaults(run=run_pcap)
    add_live_parser(kinds)
    collect_logs.add_parser(kinds)


def run_pcap(args: argparse.Namespace, config: Config) -> int:
    cfg = config.kafka
    ensure_topics(cfg, [cfg.messages_topic, cfg.deadletter_topic])
    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    faults = FaultPoints(args.kill_at)
    ledger = load_state(args.state_file) if args.state_file else {}
    done: dict[str, dict[str, int]] = ledger.setdefault("files", {})
    out = DurableProducer(make_producer(cfg))
    ends = TopicEnds(cfg) if args.state_file else None
    total, failed, skipped_files = CollectorStats(), 0, 0
    try:
        already = ends.written_since(ledger.get("kafka", {})) if ends is not None else set()
        sink = RedeliverySkippingSink(KafkaRecordSink(cfg, out, key_function(cfg.messages_key)), already)
        counted = _FaultSink(sink, faults)
        for path in args.paths:
            key, stamp = str(path.resolve()), _stamp(path)
            if done.get(key) == stamp:
                skipped_files += 1
                continue
            if ends is not None and args.state_file:  # where this file's records begin in Kafka
                save_state(args.state_file, ledger | {"kafka": ends.ends()})
            try:
                total.merge(read_capture(path, counted, redactor, load_catalog(), config.collector.max_message_bytes,
                                         decoder=config.collector.pcap_decoder))
            except CaptureError as exc:
                print(f"chargewatch: {exc}", file=sys.stderr)
                failed += 1
            sink.flush()
            if args.state_file and stamp:
                done[key] = stamp
                save_state(args.state_file, ledger)
            faults.hit("file_done")
    finally:
        out.close()
        if ends is not None:
            ends.close()
    print(f"published {out.sent} records ({total.messages} messages, {total.connection_events} connection events, "
          f"{total.error_total} dead letters) to {cfg.bootstrap_servers}"
          + (f"; {skipped_files} files already published, {sink.skipped} records already in Kafka"
             if args.state_file else ""), file=sys.stderr)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(total.to_dict() | {"published": out.sent}, indent=1) + "\n")
    return 1 if failed else 0


def _stamp(path: Path) -> dict[str, int]:
    """What identifies a capture file's content for the ledger ({} when it cannot be read)."""
    try:
        st = path.stat()
    except OSError:
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _FaultSink:
    """Passes records on, marking each for the crash tests' --kill-at record_sent:N."""

    def __init__(self, inner: RedeliverySkippingSink, faults: FaultPoints) -> None:
        self.inner, self.faults = inner, faults

    def record(self, record: Record) -> None:
        self.inner.record(record)
        self.faults.hit("record_sent")

    def dead_letter(self, letter: DeadLetter) -> None:
        self.inner.dead_letter(letter)

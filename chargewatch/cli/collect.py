"""``chargewatch collect pcap``: publish the OCPP messages of captures to Kafka."""

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
from chargewatch.kafkaio import DurableProducer, KafkaRecordSink, ensure_topics, make_producer
from chargewatch.model import key_function
from chargewatch.redaction import Redactor
from collectors.pcap import read_capture
from collectors.stats import CollectorStats


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("collect", help="publish OCPP traffic to Kafka",
                       description="Collect OCPP messages and connection events into the Kafka messages "
                                   "topic (keyed by charge point), dead letters into the dead-letter topic.")
    kinds = p.add_subparsers(dest="source", required=True)
    pcap = kinds.add_parser("pcap", help="read pcap/pcapng files",
                            description="Publish the OCPP messages of capture files.")
    pcap.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    pcap.add_argument("--stats-json", type=Path, help="write counters here as JSON")
    pcap.set_defaults(run=run_pcap)
    add_live_parser(kinds)
    collect_logs.add_parser(kinds)


def run_pcap(args: argparse.Namespace, config: Config) -> int:
    cfg = config.kafka
    ensure_topics(cfg, [cfg.messages_topic, cfg.deadletter_topic])
    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    out = DurableProducer(make_producer(cfg))
    sink = KafkaRecordSink(cfg, out, key_function(cfg.messages_key))
    total, failed = CollectorStats(), 0
    try:
        for path in args.paths:
            try:
                total.merge(read_capture(path, sink, redactor, load_catalog(), config.collector.max_message_bytes))
            except CaptureError as exc:
                print(f"chargewatch: {exc}", file=sys.stderr)
                failed += 1
            sink.flush()
    finally:
        out.close()
    print(f"published {out.sent} records ({total.messages} messages, {total.connection_events} connection events, "
          f"{total.error_total} dead letters) to {cfg.bootstrap_servers}", file=sys.stderr)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(total.to_dict() | {"published": out.sent}, indent=1) + "\n")
    return 1 if failed else 0

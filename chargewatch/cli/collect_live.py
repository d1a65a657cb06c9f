"""``chargewatch collect live``: capture an interface, decode like ``collect pcap``, publish or detect.

The capture itself is :class:`collectors.live.LiveCollector`; this module picks the output
(Kafka through a durable spool, or the detectors in process with ``--embedded``), the evidence
pcap, the counters for ``chargewatch status``, and stops cleanly on SIGINT/SIGTERM,
``--duration`` or ``--max-packets``. The decoded records go to the spool
(:class:`chargewatch.spool_output.SpooledOutput`) and a separate publisher process takes them to
Kafka exactly once, so records decoded before a crash are published by the next run.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from chargewatch.catalog import load_catalog
from chargewatch.config import Config, resolve_redaction_key
from chargewatch.model import Record
from chargewatch.redaction import Redactor
from chargewatch.spool_output import SpooledOutput, default_spool_dir
from chargewatch.status import StatusWriter
from collectors.frames import DecodeContext
from collectors.live import LiveCollector, LiveOptions
from collectors.pcapwriter import RotatingPcapWriter
from collectors.stats import CollectorStats, DeadLetter

KAFKA_BLOCK_MS = 5_000  # longest a Kafka call may block the spool's publisher process


def add_live_parser(kinds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    live = kinds.add_parser(
        "live", help="capture a network interface (root or CAP_NET_RAW)",
        description="Capture OCPP traffic live from an interface and publish its messages to Kafka "
                    "(or run the detectors in process with --embedded). Stops on SIGINT/SIGTERM, "
                    "--duration or --max-packets, after flushing everything. Exit status 0 on a clean stop.")
    live.add_argument("--iface", required=True, help="interface to capture (e.g. eth1 on a mirror port, lo)")
    live.add_argument("--bpf", default="", metavar="FILTER",
                      help='kernel capture filter in tcpdump syntax, e.g. "tcp port 8080" (default: everything)')
    live.add_argument("--pcap-dir", type=Path, help="also write what was decoded to rotating pcap files here")
    live.add_argument("--pcap-rotate-mb", type=float, default=100.0, metavar="N",
                      help="start a new evidence file after N MB (default 100)")
    live.add_argument("--pcap-keep", type=int, default=10, metavar="K",
                      help="keep the newest K evidence files, delete older ones (default 10)")
    live.add_argument("--embedded", action="store_true",
                      help="run the detectors in this process instead of publishing to Kafka")
    live.add_argument("--out", type=Path, help="--embedded: write alert documents here (JSON lines; default stdout)")
    live.add_argument("--deadletter", type=Path, help="--embedded: write undecodable input here (JSON lines)")
    live.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S seconds")
    live.add_argument("--max-packets", type=int, default=0, metavar="N", help="stop after N captured frames")
    live.add_argument("--status-name", metavar="NAME",
                      help="counters go to [collector] status_dir/live-NAME.json (default NAME: the interface)")
    live.add_argument("--queue-packets", type=int, default=0, metavar="N",
                      help="frames buffered between capture and decoding (default: [collector] live_queue_packets)")
    live.add_argument("--spool-dir", type=Path, default=None, metavar="DIR",
                      help="durable spool between decoding and Kafka (default: [collector] live_spool_dir, else "
                           "<status_dir>/../spool/live-NAME); records a crash left in it are published first")
    live.set_defaults(run=run_live)


class _KafkaOutput:
    """Records to the messages topic, dead letters to the dead-letter topic (like ``collect pcap``),
    through the spool: an append is all the decoding thread does; Kafka may be down meanwhile."""

    def __init__(self, config: Config, directory: Path) -> None:
        cfg = config.collector
        self.spool = SpooledOutput(config.kafka, directory, max_bytes=cfg.live_spool_max_bytes,
                                   fsync_interval_s=cfg.live_fsync_interval_s, kafka_block_ms=KAFKA_BLOCK_MS,
                                   drain_timeout_s=cfg.live_drain_timeout_s)
        self.sink = self.spool.sink
        self.target = (f"spool {directory} -> Kafka {config.kafka.bootstrap_servers} "
                       f"topic {config.kafka.messages_topic}")

    def start(self) -> None:
        self.spool.start()

    def flush(self) -> None:
        """Nothing to do: each record reached the operating system when it was spooled."""

    def counters(self) -> dict[str, Any]:
        counters = self.spool.counters()
        return {"published": counters["delivered"], **counters}

    def close(self) -> None:
        self.spool.close()


class _EmbeddedOutput:
    """The detectors in process: every alert (and each update of one) as a JSON line."""

    def __init__(self, config: Config, out: Path | None, deadletter: Path | None) -> None:
        from chargewatch.embedded import load_stages

        self.stages = load_stages(config)
        self.target = f"alerts to {out or 'stdout'}"
        self.alerts_out: TextIO = out.open("a") if out else sys.stdout
        self.letters_out: TextIO | None = deadletter.open("a") if deadletter else None
        self.alerts = self.dead_letters = 0
        self.sink = self
        self.closed = False

    def start(self) -> None:
        """Nothing to start: the detectors run in this process."""

    def record(self, record: Record) -> None:
        for alert in self.stages.process(record):
            self.alerts_out.write(json.dumps(alert.to_document(), sort_keys=True) + "\n")
            self.alerts += 1

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1
        if self.letters_out is not None:
            self.letters_out.write(json.dumps(letter.to_dict()) + "\n")

    def flush(self) -> None:
        self.alerts_out.flush()
        if self.letters_out is not None:
            self.letters_out.flush()

    def counters(self) -> dict[str, Any]:
        return {"alerts": self.alerts, "dead_letters": self.dead_letters}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush()
        if self.alerts_out is not sys.stdout:
            self.alerts_out.close()
        if self.letters_out is not None:
            self.letters_out.close()


def run_live(args: argparse.Namespace, config: Config) -> int:
    cfg = config.collector
    name = args.status_name or args.iface
    options = LiveOptions(iface=args.iface, bpf=args.bpf, queue_packets=args.queue_packets or cfg.live_queue_packets,
                          queue_bytes=cfg.live_queue_bytes, socket_buffer_bytes=cfg.live_socket_buffer_bytes,
                          flush_interval_s=cfg.live_flush_interval_s, max_packets=args.max_packets)
    redactor = Redactor(resolve_redaction_key(config.redaction), enabled=config.redaction.enabled)
    spool = args.spool_dir or (Path(cfg.live_spool_dir) if cfg.live_spool_dir
                               else default_spool_dir(cfg.status_dir, f"live-{name}"))
    output: _KafkaOutput | _EmbeddedOutput = (_EmbeddedOutput(config, args.out, args.deadletter) if args.embedded
                                              else _KafkaOutput(config, spool.expanduser()))
    try:
        ctx = DecodeContext(sink=output.sink, stats=CollectorStats(), redactor=redactor, catalog=load_catalog(),
                            source=f"live:{args.iface}", max_message=cfg.max_message_bytes)
        pcap = None
        if args.pcap_dir is not None:
            pcap = functools.partial(RotatingPcapWriter, args.pcap_dir, f"live-{name}",
                                     rotate_bytes=int(args.pcap_rotate_mb * 1_000_000), keep=args.pcap_keep)
        collector = LiveCollector(options, ctx, output.flush, pcap)
        output.start()
        _capture(args, collector, output, StatusWriter(Path(cfg.status_dir).expanduser(), f"live-{name}", "live",
                                                       lambda: _snapshot(collector, output)))
    finally:
        output.close()
    return 0


def _capture(args: argparse.Namespace, collector: LiveCollector, output: _KafkaOutput | _EmbeddedOutput,
             status: StatusWriter) -> None:
    """Run until a signal, the duration or the packet limit; always write the final counters."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        collector.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    status.start()
    try:
        collector.start()
        print(f"chargewatch: capturing on {args.iface} (filter {args.bpf or 'none'}) -> {output.target}; "
              f"counters in {status.path}", file=sys.stderr, flush=True)
        while not collector.finished.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                break
        collector.close()
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        output.close()  # the spool's publisher drains before the final counters are written
        status.stop()
    snap = _snapshot(collector, output)
    print(f"chargewatch: live capture on {args.iface} stopped: {snap['frames']} frames, {snap['messages']} messages, "
          f"{snap['errors']} errors, {snap['drops']} drops {snap['details']['drops']}", file=sys.stderr)


def _snapshot(collector: LiveCollector, output: _KafkaOutput | _EmbeddedOutput) -> dict[str, Any]:
    """The capture's counters with the output's; the spool's drops count with the capture's."""
    snap = collector.snapshot()
    out = output.counters()
    snap["details"]["output"] = out
    for reason, count in out.get("drops", {}).items():
        snap["details"]["drops"][reason] = count
        snap["drops"] += count
    return snap

"""``chargewatch analyze``: the embedded default, captures in, alerts out, no services needed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from chargewatch.alerts import SEVERITY_NAMES, iso_time
from chargewatch.config import LOG_FORMATS, Config, with_overrides
from chargewatch.embedded import AnalysisResult, analyze
from chargewatch.model import Record
from detectors.policy import Policy, load_policy

if TYPE_CHECKING:
    from detectors.model_scoring import Scored

PARALLEL_MIN_BYTES = 4 << 20  # below this, starting workers costs more than it saves


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("analyze", help="analyze captures in-process (no Kafka/Elasticsearch)",
                       description="Decode pcap/pcapng captures, run every detector and report alerts. "
                                   "Exit status 0 when every file was read, 1 when a file was unreadable.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="pcap or pcapng file, or OCPP log")
    p.add_argument("--input-format", choices=("auto", "pcap", *LOG_FORMATS), default=None,
                   help="what the inputs are (default: [collector] input_format, auto: pcap/pcapng by their "
                        "magic bytes, else an OCPP log whose format is recognised line by line)")
    p.add_argument("--format", choices=("table", "jsonl"), default="table",
                   help="table: summary and alert table; jsonl: one alert document per line")
    p.add_argument("--out", type=Path, help="write alerts here instead of stdout")
    p.add_argument("--store", type=Path, help="also keep the alerts, every decoded record, the asset inventory and "
                                              "the charging sessions with their anomaly scores in this SQLite file "
                                              "(embedded store; the analysis then runs in one process): the "
                                              "responder commands and the dashboard read it")
    p.add_argument("--deadletter", type=Path, help="write undecodable input records here (JSON lines)")
    p.add_argument("--stats-json", type=Path, help="write counters and timing here as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes sharing the charge points (default: one per core, up to 4, for inputs "
                        f"of {PARALLEL_MIN_BYTES >> 20} MiB or more; 1 for smaller ones)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    if args.input_format is not None:
        config = with_overrides(config, collector={"input_format": args.input_format})
    started = time.perf_counter()
    archiver = _Archiver(args.store, config) if args.store else None
    try:
        result = _analyze_with_progress(args, config, archiver)
        if archiver is not None:
            archiver.finish(result, args.paths)
    finally:
        if archiver is not None:
            archiver.store.close()
    seconds = time.perf_counter() - started
    out = args.out.open("w") if args.out else sys.stdout
    try:
        if args.format == "jsonl":
            for alert in result.alerts:
                out.write(json.dumps(alert.to_document(), sort_keys=True) + "\n")
            _summary(result, seconds, sys.stderr)
        else:
            _summary(result, seconds, out)
            _alert_table(result, out)
    finally:
        if args.out:
            out.close()
    _side_outputs(args, result, seconds)
    return 1 if result.unreadable else 0


def _workers(args: argparse.Namespace, total: int) -> int:
    if args.workers > 0:
        return int(args.workers)
    return min(os.cpu_count() or 1, 4) if total >= PARALLEL_MIN_BYTES else 1


class _Archiver:
    """``--store``: archives records into the SQLite store in batches as they are decoded (memory
    stays bounded), with each charge point's site from the policy, the charging sessions as the
    anomaly model scores them (CW-TX-006's micro-batches), then the alerts."""

    BATCH = 5000

    def __init__(self, path: Path, config: Config) -> None:
        from chargewatch.store.sqlite import SqliteAlertStore  # only with --store

        self.store = SqliteAlertStore(path)
        policy_file = config.detector.policy_file
        self.policy: Policy = load_policy(Path(policy_file).expanduser() if policy_file else None)
        self.pending: list[Record] = []
        self.sessions = 0

    def scored(self, batch: list[Scored]) -> None:
        self.sessions += self.store.put_sessions([s.as_dict() for s in batch])

    def record(self, record: Record) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        self.store.put_records(self.pending, self.sites(r.charge_point_id for r in self.pending))
        self.pending = []

    def sites(self, cp_ids: Iterable[str | None]) -> dict[str, str]:
        """The policy's site of each charge point that has one."""
        found = {}
        for cp_id in {c for c in cp_ids if c}:
            site = self.policy.site_of(cp_id)
            if site is not None:
                found[cp_id] = site.name
        return found

    def finish(self, result: AnalysisResult, paths: list[Path]) -> None:
        self.flush()
        self.store.put_alerts(result.alerts, self.sites(a.charge_point_id for a in result.alerts))
        for path in paths:
            if path.is_file():
                self.store.remember_capture(path)


def _analyze_with_progress(args: argparse.Namespace, config: Config, archiver: _Archiver | None) -> AnalysisResult:
    total = sum(p.stat().st_size for p in args.paths if p.is_file())
    workers = 1 if archiver is not None else _workers(args, total)  # records reach the store in order
    on_record = archiver.record if archiver is not None else None
    on_sessions = archiver.scored if archiver is not None else None
    if args.no_progress:
        return analyze(args.paths, config, workers=workers, on_record=on_record, on_sessions=on_sessions)
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc="analyze", file=sys.stderr, disable=None) as bar:
        if workers > 1:  # the workers cannot report progress: the bar completes at the end
            result = analyze(args.paths, config, workers=workers)
            bar.update(total)
            return result
        return analyze(args.paths, config, progress=bar.update, on_record=on_record, on_sessions=on_sessions)


def _side_outputs(args: argparse.Namespace, result: AnalysisResult, seconds: float) -> None:
    if args.deadletter:
        with args.deadletter.open("w") as f:
            for letter in result.dead_letters:
                f.write(json.dumps(letter.to_dict()) + "\n")
    if args.stats_json:
        stats = result.stats.to_dict() | {"seconds": seconds, "alerts": len(result.alerts),
                                           "unreadable": result.unreadable}
        args.stats_json.write_text(json.dumps(stats, indent=1) + "\n")


def _summary(result: AnalysisResult, seconds: float, out: TextIO) -> None:
    s = result.stats
    rate = s.messages / seconds if seconds > 0 else 0.0
    out.write(f"packets {s.packets}  tcp connections {s.tcp_connections}  websocket connections "
              f"{s.websocket_connections}  OCPP messages {s.messages}  alerts {_count(result, 'alert')}  "
              f"events {_count(result, 'event')}  "
              f"({seconds:.2f}s, {rate:,.0f} messages/s)\n")
    for title, counter in (("errors", s.errors), ("ignored", s.ignored), ("message flags", s.flags)):
        if counter:
            out.write(f"{title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) + "\n")
    for problem in result.unreadable:
        out.write(f"unreadable: {problem}\n")


def _count(result: AnalysisResult, kind: str) -> int:
    return sum(1 for a in result.alerts if a.kind == kind)


def _alert_table(result: AnalysisResult, out: TextIO) -> None:
    if not result.alerts:
        out.write("no alerts\n")
        return
    rows = [("time (UTC)", "severity", "rule", "charge point", "action", "message id", "reason")]
    rows += [(iso_time(a.ts), SEVERITY_NAMES[a.severity] if a.kind == "alert" else "(event)", a.rule_id,
              a.charge_point_id, a.action or "",
              a.message_id or "", a.reason) for a in result.alerts]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row[:6], widths, strict=True)) + "  " + row[6] + "\n")

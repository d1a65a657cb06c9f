"""``chargewatch detect``: the detector stage as a Kafka consumer-group member."""

from __future__ import annotations

import argparse
import sys

from chargewatch.config import Config
from chargewatch.embedded import load_stages
from chargewatch.faults import FaultPoints
from detectors.service import STAGES, run_detector


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("detect", help="run detectors on the Kafka messages topic",
                       description="Join the detector consumer group, run every detector on the messages "
                                   "topic and produce alerts to the alerts topic. Start several for scale.")
    p.add_argument("--stage", choices=STAGES, default="charge_point",
                   help="charge_point (default): per-charge-point detectors on the messages topic, which also "
                        "forward routed records to the correlation topic; correlation: the cross-charge-point "
                        "rules on the correlation topic, in the [kafka] correlation_group")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after this many seconds without new records (default: run forever)")
    p.add_argument("--kill-at", default=None, metavar="POINT:N",
                   help="crash testing: SIGKILL this process at the Nth pass of POINT "
                        "(alert_sent, before_flush, alerts_flushed, after_flush, after_commit)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, config: Config) -> int:
    sessions = args.stage == "charge_point" and bool(config.kafka.sessions_topic)
    stats, stage = run_detector(config, load_stages(config, sessions=sessions), FaultPoints(args.kill_at),
                                args.idle_exit, args.stage)
    print(f"detector ({args.stage}): {stats.records} records in {stats.batches} batches, {stage.alerts} alerts, "
          f"{stage.forwarded} forwarded, {stage.sessions} sessions, {stage.bad_records} bad records",
          file=sys.stderr)
    return 0

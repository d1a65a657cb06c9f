"""Benchmark: detector throughput (messages/s, one core, in process) with the full rule set,
and the memory the runner keeps per charge point.

The records come from the analyze benchmark's capture generator (decoded once by the
collector, outside the timing); only ``DetectorRunner.process`` is timed. Memory is measured
with tracemalloc: what the runner's state holds after the run, divided by the charge points.

    python bench/bench_detectors.py            # 120 000 packets, 3 runs
    python bench/bench_detectors.py --smoke    # small, for CI
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_analyze import generate  # noqa: E402

from chargewatch.catalog import load_catalog  # noqa: E402
from chargewatch.model import Record  # noqa: E402
from chargewatch.redaction import Redactor  # noqa: E402
from collectors.pcap import read_capture  # noqa: E402
from collectors.stats import DeadLetter  # noqa: E402
from detectors.policy import Policy  # noqa: E402
from detectors.registry import default_detectors  # noqa: E402
from detectors.rules import load_rules  # noqa: E402
from detectors.runner import DetectorRunner  # noqa: E402


class _Collect:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def record(self, record: Record) -> None:
        self.records.append(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        raise SystemExit(f"benchmark capture produced a dead letter: {letter}")


def records_of(packets: int, connections: int) -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.pcap")
        generate(path, packets, connections, deflate=True, seed=1, pcapng=False)
        sink = _Collect()
        read_capture(Path(path), sink, Redactor(b"bench"), load_catalog(), 1 << 20)
    return sink.records


def new_runner() -> DetectorRunner:
    rules = load_rules()
    return DetectorRunner(default_detectors(rules, load_catalog(), Policy()), rules)


def time_once(records: list[Record]) -> tuple[float, int]:
    runner = new_runner()
    started = time.perf_counter()
    alerts = sum(len(runner.process(r)) for r in records)
    return time.perf_counter() - started, alerts


def state_bytes(records: list[Record]) -> tuple[int, int]:
    """(bytes held by the runner's state after the run, charge points)."""
    runner = new_runner()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for record in records:
        runner.process(record)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return held, len(runner.states)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=120_000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="small run for CI")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.packets, args.connections, args.reps = 4000, 20, 1
    records = records_of(args.packets, args.connections)
    messages = sum(1 for r in records if hasattr(r, "message_type"))
    runs = [time_once(records) for _ in range(args.reps)]
    median = statistics.median(s for s, _ in runs)
    held, cps = state_bytes(records)
    result = {"records": len(records), "messages": messages, "rules": sum(r.enabled for r in load_rules().values()),
              "median_s": round(median, 4), "messages_per_s": round(messages / median),
              "charge_points": cps, "state_bytes_per_charge_point": held // max(cps, 1), "alerts": runs[0][1]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"detectors: {result['rules']} rules enabled, {messages} messages ({len(records)} records), "
              f"median {median:.3f}s over {args.reps} run(s): {result['messages_per_s']:,} messages/s on one core")
        print(f"state: {cps} charge points, {result['state_bytes_per_charge_point']:,} bytes per charge point "
              f"(tracemalloc, after {messages // max(cps, 1)} messages each); alerts {result['alerts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

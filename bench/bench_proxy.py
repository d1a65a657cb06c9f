"""Benchmark: the latency the mirroring proxy adds, and the frames/s it relays.

A real ``ocpp`` 1.6 charge point sends Heartbeat CALLs to a real ``ocpp`` central system
(tests.peers), first directly and then through the proxy, in the same run; each CALL→CALLRESULT
round trip is timed and p50/p99 reported for both. Then ``--clients`` charge points send
Heartbeats concurrently through the proxy for the frames/s figure. The proxy spools every record
on disk and its publisher process mirrors the spool into the Kafka of ``--kafka`` (default: the
dev stack's) or, with ``--no-kafka``, tries a loopback port nothing listens on (records then wait
in the spool, which is the proxy's failure mode). Prints figures; asserts nothing about speed.

    python bench/bench_proxy.py              # 2000 calls each way, 8 clients x 1000 calls
    python bench/bench_proxy.py --smoke      # a few hundred calls, for CI (no Kafka needed)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocpp.v16 import call as call16  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from chargewatch.config import Config, with_overrides  # noqa: E402
from tests import peers  # noqa: E402
from tests.proxy_harness import central_system, running_proxy  # noqa: E402


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _round_trips(base: str, cp_id: str, calls: int) -> list[float]:
    """Seconds of each Heartbeat CALL→CALLRESULT of one charge point (after its boot)."""
    async with connect(base + cp_id, subprotocols=["ocpp1.6"], compression="deflate",  # type: ignore[list-item]
                       proxy=None) as ws:
        cp = peers._Cp16(cp_id, ws)
        loop = asyncio.create_task(cp.start())
        try:
            await cp.call(call16.BootNotification(charge_point_model="Bench", charge_point_vendor="Chargewatch"))
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await cp.call(call16.Heartbeat())
                times.append(time.perf_counter() - started)
            return times
        finally:
            loop.cancel()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _run(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    async with central_system([]) as (_central, central_port):
        direct = await _round_trips(f"ws://127.0.0.1:{central_port}/ocpp/", "BENCH-DIRECT", args.calls)
        async with running_proxy(config, upstream=f"ws://127.0.0.1:{central_port}") as (proxy, port):
            base = f"ws://127.0.0.1:{port}/ocpp/"
            proxied = await _round_trips(base, "BENCH-PROXY", args.calls)
            frames_before = proxy.counters.frames
            started = time.perf_counter()
            await asyncio.gather(*(_round_trips(base, f"BENCH-{i:03d}", args.load_calls) for i in range(args.clients)))
            seconds = time.perf_counter() - started
            load_frames = proxy.counters.frames - frames_before
        snapshot = proxy.snapshot()
    return {"calls": args.calls, "direct_p50_ms": _pct(direct, 0.5), "direct_p99_ms": _pct(direct, 0.99),
            "proxy_p50_ms": _pct(proxied, 0.5), "proxy_p99_ms": _pct(proxied, 0.99),
            "added_p50_ms": _pct(proxied, 0.5) - _pct(direct, 0.5),
            "added_p99_ms": _pct(proxied, 0.99) - _pct(direct, 0.99),
            "direct_mean_ms": statistics.fmean(direct) * 1000, "proxy_mean_ms": statistics.fmean(proxied) * 1000,
            "clients": args.clients, "load_frames": load_frames, "load_seconds": seconds,
            "frames_per_s": load_frames / seconds if seconds else 0.0, "mirrored": snapshot["details"]["delivered"],
            "spooled": snapshot["details"]["spool"]["spooled"], "dropped": snapshot["drops"],
            "still_spooled_bytes": snapshot["details"]["spool"]["pending_bytes"],
            "kafka": config.kafka.bootstrap_servers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="timed round trips each way")
    parser.add_argument("--clients", type=int, default=8, help="concurrent charge points for frames/s")
    parser.add_argument("--load-calls", type=int, default=1000, help="calls per concurrent charge point")
    parser.add_argument("--kafka", default="127.0.0.1:19092", help="Kafka bootstrap servers to mirror into")
    parser.add_argument("--no-kafka", action="store_true",
                        help="mirror into an unreachable broker (records stay in the spool)")
    parser.add_argument("--smoke", action="store_true", help="small run for CI (implies --no-kafka)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.clients, args.load_calls, args.no_kafka = 200, 4, 100, True
    if args.no_kafka:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # every reconnect attempt would log an error
    with tempfile.TemporaryDirectory() as tmp:
        run = uuid.uuid4().hex[:8]
        kafka = f"127.0.0.1:{_closed_port()}" if args.no_kafka else args.kafka
        config = with_overrides(Config(), kafka={"bootstrap_servers": kafka, "messages_topic": f"bench{run}.messages",
                                                 "deadletter_topic": f"bench{run}.deadletter"},
                                redaction={"key": "00" * 32}, collector={"status_dir": tmp},
                                proxy={"kafka_block_ms": 1000, "drain_timeout_s": 5.0, "ping_interval_s": 0.0})
        figures = asyncio.run(_run(args, config))
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"round trips ({figures['calls']} Heartbeat CALL→CALLRESULT each, ms)   p50      p99     mean")
    for label, key in (("direct", "direct"), ("through the proxy", "proxy")):
        print(f"  {label:42} {figures[key + '_p50_ms']:7.3f}  {figures[key + '_p99_ms']:7.3f}  "
              f"{figures[key + '_mean_ms']:7.3f}")
    print(f"  {'added by the proxy':42} {figures['added_p50_ms']:7.3f}  {figures['added_p99_ms']:7.3f}")
    print(f"throughput: {figures['clients']} charge points, {figures['load_frames']} frames in "
          f"{figures['load_seconds']:.2f} s = {figures['frames_per_s']:,.0f} frames/s through the proxy")
    print(f"mirror ({figures['kafka']}): {figures['spooled']} records spooled, {figures['mirrored']} delivered to "
          f"Kafka, {figures['dropped']} dropped, {figures['still_spooled_bytes']} bytes left in the spool")
    return 0


if __name__ == "__main__":
    sys.exit(main())

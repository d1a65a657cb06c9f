"""Benchmark: ``chargewatch analyze`` against tshark on one crafted OCPP 1.6 capture.

Generates (with ``tests/pcapgen.py``, seeded, deterministic) a capture of many charge points
talking OCPP-J 1.6 over WebSocket to a CSMS on ports 9000 and 8180, then times on that same
file, ``--reps`` times each (median reported):

(a) tshark extracting WebSocket text payloads (one non-empty output line = one message);
(b) ``chargewatch analyze FILE --format jsonl --out /dev/null --no-progress --stats-json S``.

Prints a table (tool, packets, messages, median seconds, messages/s, ratio ours/tshark) and
the message counts; ``--json`` prints the figures as one JSON object instead. Never asserts
speed: exits 0 unless a tool failed (2) or the message counts disagree (1).

Run: ``python bench/bench_analyze.py [--packets N | --smoke] [--no-deflate] [--json]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pcapgen import PcapWriter, TcpFlow, WsSession

REPO = Path(__file__).resolve().parent.parent

#: The tshark text field holding a WebSocket text message (decompressed when permessage-deflate).
TSHARK_FIELD = "websocket.payload.text"
PORTS = (9000, 8180)
SERVER_IP = "10.0.0.1"
T0 = 1_718_000_000.0
#: Packets per connection for open (3 handshake + request/ACK + response/ACK) and close
#: (2 close frames with ACKs + FIN, FIN, ACK).
OPEN_PACKETS = 7
CLOSE_PACKETS = 7
VENDORS = (
    ("ABB", "Terra AC"),
    ("Alfen", "Eve Single"),
    ("Wallbox", "Pulsar Plus"),
    ("Kempower", "S-Series"),
    ("Schneider", "EVlink Pro AC"),
)
STATUSES = (
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "Finishing",
    "Available",
)


class BenchError(Exception):
    """A tool the benchmark runs failed (not a slow result: those never fail the run)."""


# --------------------------------------------------------------------------- traffic


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _j(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class ChargePoint:
    """State of one simulated charge point and its connection."""

    name: str
    ws: WsSession
    rng: random.Random
    meter_wh: int = 0
    tx_id: int | None = None
    id_tag: str = ""
    status_idx: int = 0
    msg_seq: int = 0
    csms_seq: int = 0
    exchanges: int = 0
    pending: list[tuple[bool, str]] = field(default_factory=list)

    def uid(self) -> str:
        """A fresh OCPP unique id for a CALL from the charge point."""
        self.msg_seq += 1
        return f"{self.rng.getrandbits(32):08x}-{self.msg_seq:06d}"


class Traffic:
    """Deterministic OCPP 1.6 traffic of many charge points, interleaved in time."""

    def __init__(self, writer: PcapWriter, connections: int, *, deflate: bool, seed: int) -> None:
        """Set up ``connections`` charge points (every fifth on port 8180); nothing written yet."""
        self.writer = writer
        self.rng = random.Random(seed)
        self.deflate = deflate
        self.messages = 0
        self.texts: list[str] = []
        self.clock = T0
        self.cps: list[ChargePoint] = []
        self._tx = 1000
        for i in range(connections):
            port = PORTS[1] if i % 5 == 4 else PORTS[0]
            client = (
                f"10.{1 + i // 60000}.{(i // 250) % 240}.{2 + i % 250}",
                40000 + i,
            )
            flow = TcpFlow(writer, client, (SERVER_IP, port), T0)
            name = f"CP{i:05d}"
            ws = WsSession(flow, path=f"/ocpp/{name}", deflate=deflate, seed=seed * 100003 + i)
            self.cps.append(ChargePoint(name, ws, random.Random(seed * 7919 + i)))

    def _emit(self, cp: ChargePoint, t: float, from_client: bool, text: str) -> None:
        cp.ws.message(from_client, text, t=max(t, self.clock))
        self.clock = cp.ws.flow.now
        self.messages += 1
        self.texts.append(text)

    def _call(
        self,
        cp: ChargePoint,
        t: float,
        action: str,
        payload: dict[str, Any],
        result: dict[str, Any] | None,
    ) -> None:
        uid = cp.uid()
        self._emit(cp, t, True, _j([2, uid, action, payload]))
        if result is None:
            self._emit(cp, t, False, _j([4, uid, "NotImplemented", "Unknown vendorId", {}]))
        else:
            self._emit(cp, t, False, _j([3, uid, result]))

    def open(self, cp: ChargePoint, t: float) -> None:
        """Connect, upgrade, BootNotification and the connectors' StatusNotifications."""
        cp.ws.flow.now = max(t, self.clock)
        cp.ws.open()
        self.clock = cp.ws.flow.now
        vendor, model = VENDORS[cp.rng.randrange(len(VENDORS))]
        self._call(
            cp,
            t,
            "BootNotification",
            {
                "chargePointVendor": vendor,
                "chargePointModel": model,
                "chargePointSerialNumber": f"SN{cp.rng.getrandbits(40):012x}",
                "firmwareVersion": (f"{cp.rng.randrange(1, 6)}.{cp.rng.randrange(10)}.{cp.rng.randrange(30)}"),
            },
            {"status": "Accepted", "currentTime": _ts(t), "interval": 300},
        )
        for conn in (0, 1):
            self._call(
                cp,
                t,
                "StatusNotification",
                {
                    "connectorId": conn,
                    "errorCode": "NoError",
                    "status": "Available",
                    "timestamp": _ts(t),
                },
                {},
            )

    def step(self, cp: ChargePoint, t: float) -> None:
        """One exchange: a CALL and its CALLRESULT (or CALLERROR), sometimes a ping/pong."""
        cp.exchanges += 1
        r = cp.rng.random()
        if cp.exchanges % 25 == 0:
            cp.ws.flow.now = max(t, self.clock)
            cp.ws.ping(False, cp.rng.getrandbits(32).to_bytes(4, "big"))
            self.clock = cp.ws.flow.now
        if r < 0.30:
            self._call(cp, t, "Heartbeat", {}, {"currentTime": _ts(t)})
        elif r < 0.65:
            cp.meter_wh += cp.rng.randrange(50, 900)
            sampled = [
                {
                    "value": str(cp.meter_wh),
                    "context": "Sample.Periodic",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                },
                {
                    "value": f"{cp.rng.uniform(0, 22):.2f}",
                    "context": "Sample.Periodic",
                    "measurand": "Power.Active.Import",
                    "unit": "kW",
                },
                {
                    "value": f"{cp.rng.uniform(228, 236):.1f}",
                    "context": "Sample.Periodic",
                    "measurand": "Voltage",
                    "phase": "L1-N",
                    "unit": "V",
                },
            ]
            payload: dict[str, Any] = {
                "connectorId": 1,
                "meterValue": [{"timestamp": _ts(t), "sampledValue": sampled}],
            }
            if cp.tx_id is not None:
                payload["transactionId"] = cp.tx_id
            self._call(cp, t, "MeterValues", payload, {})
        elif r < 0.75:
            cp.status_idx = (cp.status_idx + 1) % len(STATUSES)
            self._call(
                cp,
                t,
                "StatusNotification",
                {
                    "connectorId": 1,
                    "errorCode": "NoError",
                    "status": STATUSES[cp.status_idx],
                    "timestamp": _ts(t),
                },
                {},
            )
        elif r < 0.85:
            if cp.tx_id is None:
                cp.id_tag = f"{cp.rng.getrandbits(48):012X}"
                self._call(
                    cp,
                    t,
                    "Authorize",
                    {"idTag": cp.id_tag},
                    {"idTagInfo": {"status": "Accepted"}},
                )
                self._tx += 1
                cp.tx_id = self._tx
                self._call(
                    cp,
                    t,
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": cp.id_tag,
                        "meterStart": cp.meter_wh,
                        "timestamp": _ts(t),
                    },
                    {"transactionId": cp.tx_id, "idTagInfo": {"status": "Accepted"}},
                )
            else:
                self._call(
                    cp,
                    t,
                    "StopTransaction",
                    {
                        "transactionId": cp.tx_id,
                        "idTag": cp.id_tag,
                        "meterStop": cp.meter_wh,
                        "timestamp": _ts(t),
                        "reason": "Local",
                    },
                    {"idTagInfo": {"status": "Accepted"}},
                )
                cp.tx_id = None
        elif r < 0.93:
            known = cp.rng.random() < 0.8
            self._call(
                cp,
                t,
                "DataTransfer",
                {
                    "vendorId": "com.example" if known else "org.unknown",
                    "messageId": "diag",
                    "data": _j(
                        {
                            "temp": round(cp.rng.uniform(20, 60), 1),
                            "fan": cp.rng.randrange(3000),
                        }
                    ),
                },
                {"status": "Accepted"} if known else None,
            )
        else:
            # CSMS-initiated CALL, answered by the charge point.
            cp.csms_seq += 1
            uid = f"csms-{cp.name}-{cp.csms_seq}"
            if cp.rng.random() < 0.5:
                self._emit(
                    cp,
                    t,
                    False,
                    _j([2, uid, "TriggerMessage", {"requestedMessage": "MeterValues"}]),
                )
                self._emit(cp, t, True, _j([3, uid, {"status": "Accepted"}]))
            else:
                self._emit(
                    cp,
                    t,
                    False,
                    _j([2, uid, "GetConfiguration", {"key": ["HeartbeatInterval"]}]),
                )
                self._emit(
                    cp,
                    t,
                    True,
                    _j(
                        [
                            3,
                            uid,
                            {
                                "configurationKey": [
                                    {
                                        "key": "HeartbeatInterval",
                                        "readonly": False,
                                        "value": "300",
                                    }
                                ]
                            },
                        ]
                    ),
                )

    def run(self, target_packets: int, mean_interval: float = 2.0) -> None:
        """Open every connection, exchange until ``target_packets`` is reached, close all."""
        heap: list[tuple[float, int]] = []
        for i, cp in enumerate(self.cps):
            t = T0 + self.rng.uniform(0, 5.0)
            heapq.heappush(heap, (t, i))
            cp.exchanges = -1  # not yet open
        closing = CLOSE_PACKETS * len(self.cps)
        while heap and self.writer.packets + closing < target_packets:
            t, i = heapq.heappop(heap)
            cp = self.cps[i]
            if cp.exchanges < 0:
                cp.exchanges = 0
                self.open(cp, t)
            else:
                self.step(cp, t)
            heapq.heappush(heap, (t + self.rng.expovariate(1.0 / mean_interval), i))
        for cp in sorted((c for c in self.cps if c.exchanges >= 0), key=lambda c: c.name):
            cp.ws.close(t=self.clock)
            self.clock = cp.ws.flow.now


@dataclass
class Capture:
    """The generated capture and what went into it."""

    path: str
    packets: int
    messages: int
    connections: int
    deflate: bool
    size_bytes: int
    gen_seconds: float
    texts: list[str]


def generate(path: str, packets: int, connections: int, *, deflate: bool, seed: int, pcapng: bool) -> Capture:
    """Write the benchmark capture; returns its figures (including pcapgen's own speed)."""
    start = time.perf_counter()
    with PcapWriter(path, pcapng=pcapng) as w:
        traffic = Traffic(w, connections, deflate=deflate, seed=seed)
        traffic.run(packets)
    secs = time.perf_counter() - start
    opened = sum(1 for cp in traffic.cps if cp.exchanges >= 0)
    return Capture(
        path,
        w.packets,
        traffic.messages,
        opened,
        deflate,
        os.path.getsize(path),
        secs,
        traffic.texts,
    )


# --------------------------------------------------------------------------- tools


def tshark_command(tshark: str, path: str) -> list[str]:
    """The tshark command line that prints one WebSocket text message per line."""
    cmd = [tshark, "-n", "-r", path]
    for port in PORTS:
        cmd += ["-d", f"tcp.port=={port},http"]
    return [*cmd, "-o", "websocket.decompress:TRUE", "-T", "fields", "-e", TSHARK_FIELD]


def run_tshark(tshark: str, path: str) -> tuple[float, list[bytes]]:
    """One timed tshark run: (wall seconds, its non-empty output lines)."""
    cmd = tshark_command(tshark, path)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"tshark exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return secs, [line for line in proc.stdout.split(b"\n") if line.strip()]


def analyze_command() -> list[str] | None:
    """The chargewatch analyze command, or None when it is not available yet."""
    # The console script installed beside this interpreter, not the first one on PATH: version
    # managers (pyenv) put a shell shim there that adds ~80 ms of their own to every run.
    beside = Path(sys.executable).with_name("chargewatch")
    exe = str(beside) if beside.is_file() else shutil.which("chargewatch")
    base = [exe] if exe else [sys.executable, "-m", "chargewatch.cli"]
    try:
        probe = subprocess.run(
            [*base, "analyze", "--help"],
            capture_output=True,
            check=False,
            cwd=REPO,
            env=_env(),
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        return None
    return base


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_analyze(base: list[str], path: str, stats_path: str) -> tuple[float, dict[str, Any]]:
    """One timed analyze run: (wall seconds, its stats JSON)."""
    cmd = [
        *base,
        "analyze",
        path,
        "--format",
        "jsonl",
        "--out",
        os.devnull,
        "--no-progress",
        "--stats-json",
        stats_path,
    ]
    if os.path.exists(stats_path):
        os.unlink(stats_path)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False, cwd=REPO, env=_env())
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"analyze exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    try:
        with open(stats_path, encoding="utf-8") as fh:
            stats = json.load(fh)
        int(stats["messages"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"analyze wrote no usable stats JSON at {stats_path}: {exc}") from exc
    return secs, stats


# --------------------------------------------------------------------------- report


def _row(tool: str, fig: dict[str, Any], ratio: str) -> str:
    secs = f"{fig['seconds']:.3f}"
    rate = f"{fig['messages_per_s']:,.0f}"
    return f"{tool:<10} {fig['packets']!s:>9} {fig['messages']!s:>9} {secs:>10} {rate:>12} {ratio:>14}"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=120_000, help="packets to generate (default 120000)")
    ap.add_argument("--smoke", action="store_true", help="small run (~3000 packets) for CI")
    ap.add_argument(
        "--connections", type=int, default=None, help="charge point connections (default min(200, packets // 150))"
    )
    ap.add_argument("--no-deflate", action="store_true", help="no permessage-deflate")
    ap.add_argument("--pcapng", action="store_true", help="write pcapng instead of classic pcap")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="timed runs per tool (median reported)")
    ap.add_argument("--keep", metavar="PATH", help="write the capture here and keep it")
    ap.add_argument("--tshark", default=shutil.which("tshark"), help="tshark binary")
    ap.add_argument("--json", action="store_true", help="print machine-readable figures only")
    return ap.parse_args(argv)


def bench_tshark(tshark_bin: str, cap: Capture, reps: int, errors: list[str]) -> dict[str, Any]:
    """Time tshark ``reps`` times on the capture; also compare its texts with those written."""
    fig: dict[str, Any] = {"available": True, "command": " ".join(tshark_command("tshark", "FILE"))}
    try:
        out = [run_tshark(tshark_bin, cap.path) for _ in range(reps)]
    except (BenchError, OSError) as exc:
        errors.append(f"tshark: {exc}")
        fig["error"] = str(exc)
        return fig
    seen = {len(lines) for _, lines in out}
    med = statistics.median(secs for secs, _ in out)
    messages = len(out[0][1])
    fig.update(
        packets=cap.packets,
        messages=messages,
        seconds=round(med, 4),
        messages_per_s=round(messages / med, 1),
        runs=[round(secs, 4) for secs, _ in out],
    )
    if len(seen) > 1:
        errors.append(f"tshark message counts differ between runs: {sorted(seen)}")
    # Same texts as written? (a multiset: tshark prints them in capture order)
    differ = Counter(line.decode("utf-8", "replace") for line in out[0][1])
    differ.subtract(cap.texts)
    fig["texts_differing"] = sum(abs(v) for v in differ.values())
    return fig


def bench_analyze(base: list[str], cap: Capture, reps: int, workdir: str, errors: list[str]) -> dict[str, Any]:
    """Time ``chargewatch analyze`` ``reps`` times on the capture."""
    shown = base[-2:] if base[0] == sys.executable else base
    fig: dict[str, Any] = {
        "available": True,
        "command": " ".join(shown) + " analyze FILE --format jsonl --out /dev/null --no-progress"
        " --stats-json STATS.json",
    }
    stats_path = os.path.join(workdir, "stats.json")
    try:
        runs = [run_analyze(base, cap.path, stats_path) for _ in range(reps)]
    except BenchError as exc:
        errors.append(f"analyze: {exc}")
        fig["error"] = str(exc)
        return fig
    med = statistics.median(secs for secs, _ in runs)
    stats = runs[0][1]
    messages = int(stats["messages"])
    fig.update(
        packets=stats.get("packets"),
        messages=messages,
        seconds=round(med, 4),
        messages_per_s=round(messages / med, 1),
        runs=[round(secs, 4) for secs, _ in runs],
        internal_seconds=stats.get("seconds"),
    )
    if len({int(st["messages"]) for _, st in runs}) > 1:
        errors.append("analyze message counts differ between runs")
    return fig


def _capture_figures(cap: Capture, keep: bool) -> dict[str, Any]:
    return {
        "path": cap.path if keep else None,
        "packets": cap.packets,
        "messages": cap.messages,
        "connections": cap.connections,
        "deflate": cap.deflate,
        "bytes": cap.size_bytes,
        "gen_seconds": round(cap.gen_seconds, 4),
        "gen_packets_per_s": round(cap.packets / cap.gen_seconds, 1) if cap.gen_seconds else None,
    }


def _report(result: dict[str, Any], say: Callable[[str], None]) -> None:
    tshark, ours, ratio = result["tshark"], result["analyze"], result["ratio_ours_over_tshark"]
    say("")
    say(f"{'tool':<10} {'packets':>9} {'messages':>9} {'median s':>10} {'messages/s':>12} {'ours/tshark':>14}")
    if "seconds" in tshark:
        say(_row("tshark", tshark, "1.00"))
    if "seconds" in ours:
        say(_row("analyze", ours, "-" if ratio is None else f"{ratio:.2f}x"))
    say("")
    counts = ", ".join(f"{k}={v}" for k, v in result["counts"].items())
    say(f"messages: {counts}   " + ("MISMATCH" if result["mismatch"] else "(agree)"))
    if "texts_differing" in tshark:
        say(f"tshark texts differing from those written: {tshark['texts_differing']}")
    for err in result["errors"]:
        say(f"error: {err}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit codes."""
    args = _parse_args(argv)
    packets = 3000 if args.smoke else args.packets
    connections = args.connections or max(2, min(200, packets // 150))

    def say(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    with tempfile.TemporaryDirectory(prefix="cw-bench-") as tmp:
        path = args.keep or os.path.join(tmp, "bench.pcapng" if args.pcapng else "bench.pcap")
        cap = generate(path, packets, connections, deflate=not args.no_deflate, seed=args.seed, pcapng=args.pcapng)
        capfig = _capture_figures(cap, bool(args.keep))
        say(
            f"capture: {cap.path}: {cap.packets} packets, {cap.messages} OCPP messages, "
            f"{cap.connections} connections (ports {PORTS[0]} and {PORTS[1]}), "
            f"deflate={'on' if cap.deflate else 'off'}, {cap.size_bytes / 1e6:.1f} MB"
        )
        say(f"pcapgen: {cap.gen_seconds:.2f} s, {capfig['gen_packets_per_s'] or 0:,.0f} packets/s")
        errors: list[str] = []

        tshark: dict[str, Any] = {"available": False}
        if args.tshark:
            tshark = bench_tshark(args.tshark, cap, args.reps, errors)
        else:
            say("tshark not available: (a) skipped")

        ours: dict[str, Any] = {"available": False}
        base = analyze_command()
        if base is None:
            say("analyze not available: (b) skipped (no `chargewatch analyze`, no chargewatch.cli)")
        else:
            ours = bench_analyze(base, cap, args.reps, tmp, errors)

    counts = {"generated": cap.messages}
    for name, fig in (("tshark", tshark), ("analyze", ours)):
        if "messages" in fig:
            counts[name] = fig["messages"]
    ratio = None
    if tshark.get("messages_per_s") and "messages_per_s" in ours:
        ratio = round(ours["messages_per_s"] / tshark["messages_per_s"], 3)
    result: dict[str, Any] = {
        "capture": capfig,
        "reps": args.reps,
        "tshark": tshark,
        "analyze": ours,
        "counts": counts,
        "mismatch": len(set(counts.values())) > 1 or bool(tshark.get("texts_differing")),
        "ratio_ours_over_tshark": ratio,
        "errors": errors,
    }
    _report(result, say)
    if args.json:
        print(json.dumps(result, indent=2))
    if errors:
        return 2
    return 1 if result["mismatch"] else 0


if __name__ == "__main__":
    sys.exit(main())

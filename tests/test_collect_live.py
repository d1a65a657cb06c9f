"""``chargewatch collect live``: real OCPP peers on loopback, captured by a real collector process.

The collector runs as a subprocess (``collect live --iface lo --bpf "tcp port P"``) while
central systems and charge points of the PyPI ``ocpp`` library talk on port P. Every frame the
peers sent must arrive in Kafka exactly once, the rotating evidence pcap must decode to the same
messages, a burst into a tiny queue must be counted as drops (not hang), and the status file
must hold the counters. A collector SIGKILLed while Kafka was unreachable leaves its records in
the spool, and the next run publishes each of them exactly once. Live capture needs root
(CAP_NET_RAW): without it these tests FAIL. The evidence pcap writer also has plain unit tests
here (no root, no services).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import serve

from chargewatch.cli import main
from chargewatch.config import Config, to_toml, with_overrides
from chargewatch.model import record_from_dict
from collectors.packets import LINKTYPE_ETHERNET
from collectors.pcapfile import CaptureReader
from collectors.pcapwriter import RotatingPcapWriter, file_header
from tests.conftest import TEST_KEY, Services, isolated_config
from tests.framecheck import Collected, check_frames, collect
from tests.kafka_helpers import read_topic
from tests.peers import SCENARIOS, SUBPROTOCOLS, SentFrame, _Central, _Context
from tests.proxy_harness import closed_port, spooled, wait_for

# Ports unique to this module (other suites use ephemeral ports or their own fixed ones).
PORT_SESSIONS, PORT_BURST, PORT_EMBEDDED, PORT_RESTART = 47_811, 47_812, 47_813, 47_815
DROP_REASONS = ("queue_full", "kernel", "spool_full", "spool_write_error", "kafka_error")
SESSIONS = ["v16_session", "v201_session"]
STOP_TIMEOUT = 180.0  # generous: the machine is shared and may be slow


@pytest.fixture(autouse=True)
def _quiet_ocpp(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.CRITICAL, logger="ocpp")
    yield


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("live capture on lo needs root (CAP_NET_RAW): run as root, "
                    "e.g. `sudo python -m pytest tests/test_collect_live.py`", pytrace=False)


class LiveProcess:
    """A ``chargewatch collect live`` subprocess on lo, ready once its status file says so."""

    def __init__(self, tmp: Path, config: Config, port: int, *extra: str) -> None:
        self.status_dir = tmp / "status"
        config = with_overrides(config, collector={"status_dir": str(self.status_dir)})
        path = tmp / "live.toml"
        path.write_text(to_toml(config))
        self.name = f"test{port}"
        self.status_path = self.status_dir / f"live-{self.name}.json"
        args = [sys.executable, "-m", "chargewatch.cli", "--config", str(path), "collect", "live", "--iface", "lo",
                "--bpf", f"tcp port {port}", "--status-name", self.name, *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """The status file appears once the packet socket is bound: from then on nothing is missed."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"collect live exited early ({self.proc.returncode}): {err}{out}")
            if self.status_path.is_file() and self.status()["pid"] == self.proc.pid:
                return
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"collect live never wrote {self.status_path}")

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.status_path.read_text())
        return data

    def interrupt(self) -> tuple[int, str, str, dict[str, Any]]:
        """SIGINT, then (exit code, stdout, stderr, final status document)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"collect live did not stop within {STOP_TIMEOUT}s of SIGINT: {err}")
        return self.proc.returncode, out, err, self.status()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def _talk(port: int, scenarios: list[str]) -> list[SentFrame]:
    """Real ocpp peers (tests.peers) talk on 127.0.0.1:port, permessage-deflate on; every frame sent."""
    log: list[SentFrame] = []
    central = _Central(log)
    async with serve(central.handle, "127.0.0.1", port, subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
                     compression="deflate", process_request=central.process_request):
        ctx = _Context(f"ws://127.0.0.1:{port}/ocpp/", "deflate", central, log)
        for name in scenarios:
            await SCENARIOS[name](ctx)
    return sorted(log, key=lambda frame: frame.t)


def _collected(records: list[dict[str, Any]], status: dict[str, Any]) -> Collected:
    """What the collector published, with its counters from the status file, for framecheck."""
    collected = Collected()
    for value in records:
        collected.record(record_from_dict(value))
    details = status["details"]
    collected.stats.messages = status["messages"]
    collected.stats.tcp_connections = details["tcp_connections"]
    collected.stats.websocket_connections = details["websocket_connections"]
    collected.stats.errors.update(details["errors"])
    return collected


def _concatenate(files: list[Path], target: Path) -> Path:
    """One pcap of the rotated files in order (same link type: only the first global header kept)."""
    with target.open("wb") as out:
        out.write(file_header(LINKTYPE_ETHERNET))
        for path in files:
            out.write(path.read_bytes()[24:])
    return target


@pytest.mark.root
def test_live_capture_to_kafka_exactly_once_with_evidence_pcap(tmp_path: Path, services: Services) -> None:
    _need_root()
    config = isolated_config(services)
    evidence = tmp_path / "evidence"
    live = LiveProcess(tmp_path, config, PORT_SESSIONS, "--pcap-dir", str(evidence),
                       "--pcap-rotate-mb", "0.002", "--pcap-keep", "1000")
    try:
        frames = asyncio.run(_talk(PORT_SESSIONS, SESSIONS))
        code, _, err, status = live.interrupt()
    finally:
        live.kill()
    assert code == 0, err
    assert not status["running"] and status["kind"] == "live", status
    records = read_topic(services.kafka, config.kafka.messages_topic)
    assert read_topic(services.kafka, config.kafka.deadletter_topic) == []
    check_frames(_collected(records, status), frames, key=bytes.fromhex(TEST_KEY))  # exactly once, in order
    details = status["details"]
    assert status["frames"] == details["decoded_frames"] > 0 and status["bytes"] > 0, status
    assert status["drops"] == 0 and details["drops"] == dict.fromkeys(DROP_REASONS, 0), status
    assert status["errors"] == 0 and status["messages"] == len(frames), status
    assert details["truncated_frames"] == 0 and details["queue_depth"] == 0, details
    output = details["output"]
    assert output["published"] == output["delivered"] == len(records), details
    # Everything spooled reached Kafka before the clean stop returned; nothing needed a restart.
    assert output["spool"]["spooled"] == len(records) and output["spool"]["pending_bytes"] == 0, output
    assert output["redelivered_skipped"] == 0 and output["publisher"]["restarts"] == 0, output
    # lo shows each packet twice (out, in); the kernel filter drops the outgoing copy before user space.
    assert details["loopback_duplicates_skipped"] == 0, details
    # The evidence pcap: rotated into several files, together the same packets and the same messages.
    files = sorted(evidence.glob("*.pcap"))
    assert len(files) > 1 and details["pcap"]["files_written"] == len(files), (files, details["pcap"])
    assert details["pcap"]["packets"] == status["frames"]
    check_frames(collect(_concatenate(files, tmp_path / "all.pcap"), key=bytes.fromhex(TEST_KEY)), frames,
                 key=bytes.fromhex(TEST_KEY))


def _blast(port: int, writes: int) -> int:
    """A plain TCP burst: `writes` small segments as fast as possible; returns bytes received."""
    with socket.create_server(("127.0.0.1", port)) as server:
        received = 0

        def drain() -> None:
            nonlocal received
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(65536):
                    received += len(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(writes):
                client.sendall(b"x" * 64)
        reader.join(timeout=STOP_TIMEOUT)
        return received


@pytest.mark.root
def test_burst_into_tiny_queue_counts_drops_and_stops(tmp_path: Path, services: Services) -> None:
    _need_root()
    config = isolated_config(services)
    live = LiveProcess(tmp_path, config, PORT_BURST, "--queue-packets", "1")
    try:
        assert _blast(PORT_BURST, 20_000) == 20_000 * 64
        code, _, err, status = live.interrupt()
    finally:
        live.kill()
    assert code == 0, err
    details = status["details"]
    drops = details["drops"]
    assert status["drops"] == sum(drops.values()) and drops["queue_full"] > 0, status
    assert drops["queue_full"] + drops["kernel"] == status["drops"], drops  # the spool lost nothing
    # Every frame read was either decoded or counted as dropped; nothing vanished.
    assert status["frames"] == details["decoded_frames"] + drops["queue_full"], status
    assert details["queue_depth_max"] == 1 and details["queue_depth"] == 0, details
    assert status["bytes"] > 20_000 * 64, status  # every frame carrying the burst passed the sniffer
    assert details["truncated_frames"] == 0 and details["tcp_connections"] == 1, details


@pytest.mark.root
def test_sigkill_with_undelivered_spool_then_restart_publishes_exactly_once(tmp_path: Path,
                                                                           services: Services) -> None:
    _need_root()
    spool = tmp_path / "spool"
    config = with_overrides(isolated_config(services), collector={"live_drain_timeout_s": 60.0})
    offline = with_overrides(config, kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}"})
    (tmp_path / "crashed").mkdir()
    live = LiveProcess(tmp_path / "crashed", offline, PORT_RESTART, "--spool-dir", str(spool))
    try:
        frames = asyncio.run(_talk(PORT_RESTART, SESSIONS))
        # Kafka is unreachable: the decoded records exist only in the spool when the collector dies.
        wait_for(lambda: spooled(spool) == {"message": len(frames), "connection": 4}, "the spooled records")
        assert not live.status()["details"]["output"]["kafka_connected"]
    finally:
        live.kill()
    assert live.proc.returncode == -signal.SIGKILL
    (tmp_path / "restarted").mkdir()
    restarted = LiveProcess(tmp_path / "restarted", config, PORT_RESTART, "--spool-dir", str(spool))
    try:
        code, _, err, status = restarted.interrupt()  # a clean stop waits for the spool to drain
    finally:
        restarted.kill()
    assert code == 0, err
    records = read_topic(services.kafka, config.kafka.messages_topic)
    assert read_topic(services.kafka, config.kafka.deadletter_topic) == []
    check_frames(_from_kafka(records), frames, key=bytes.fromhex(TEST_KEY))  # each frame once, in order
    output = status["details"]["output"]
    assert status["frames"] == 0 and output["spool"]["spooled"] == 0, status  # the restarted run saw no traffic
    assert output["delivered"] == len(records) == len(frames) + 4, output
    assert output["spool"]["pending_bytes"] == 0 and output["spool"]["corrupt_tail"] == 0, output
    assert output["redelivered_skipped"] == 0, output  # nothing had reached Kafka before the crash


def _from_kafka(records: list[dict[str, Any]]) -> Collected:
    """What a collector published, counted from the records themselves (its counters died with it)."""
    collected = Collected()
    for value in records:
        collected.record(record_from_dict(value))
    collected.stats.messages = len(collected.messages)
    upgrades = sum(1 for e in collected.events if e.kind == "upgrade")
    collected.stats.tcp_connections = collected.stats.websocket_connections = upgrades
    return collected


@pytest.mark.root
def test_embedded_live_capture_reports_alerts(tmp_path: Path) -> None:
    _need_root()
    alerts = tmp_path / "alerts.jsonl"
    config = with_overrides(Config(), redaction={"key": TEST_KEY})
    live = LiveProcess(tmp_path, config, PORT_EMBEDDED, "--embedded", "--out", str(alerts))
    try:
        frames = asyncio.run(_talk(PORT_EMBEDDED, ["v16_replay", "v16_direction"]))
        code, _, err, status = live.interrupt()
    finally:
        live.kill()
    assert code == 0, err
    assert status["messages"] == len(frames) and status["errors"] == 0, status
    documents = [json.loads(line) for line in alerts.read_text().splitlines()]
    found = {(doc["rule"]["id"], doc["ocpp"]["charge_point_id"]) for doc in documents}
    assert {("CW-REPLAY-001", "CP16-ATTACK"), ("CW-PROTO-001", "CP16-DIR")} <= found, found
    assert status["details"]["output"]["alerts"] >= 2


@pytest.mark.root
def test_max_packets_and_bad_arguments(tmp_path: Path) -> None:
    _need_root()
    status_dir = tmp_path / "status"
    config_path = tmp_path / "c.toml"
    config_path.write_text(to_toml(with_overrides(Config(), collector={"status_dir": str(status_dir)},
                                                  redaction={"key": TEST_KEY})))
    base = ["--config", str(config_path), "collect", "live", "--embedded", "--out", str(tmp_path / "a.jsonl")]
    assert main([*base, "--iface", "nosuchif0"]) == 2
    assert main([*base, "--iface", "lo", "--bpf", "tcp port banana"]) == 2
    # --max-packets: the collector stops by itself after N frames of the filter.
    proc = subprocess.Popen([sys.executable, "-m", "chargewatch.cli", *base, "--iface", "lo", "--bpf",
                             f"tcp port {PORT_EMBEDDED + 1}", "--max-packets", "3", "--status-name", "max"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status_path = status_dir / "live-max.json"
    deadline = time.monotonic() + STOP_TIMEOUT
    while not status_path.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        _blast(PORT_EMBEDDED + 1, 50)
        _, err = proc.communicate(timeout=STOP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    status = json.loads(status_path.read_text())
    assert status["frames"] == 3 and not status["running"], status


# --- evidence pcap writer (unit tests: no root, no services) ---------------------------------


def _frame(i: int) -> bytes:
    return bytes(12) + b"\x08\x00" + i.to_bytes(4, "big") * 40  # 174 bytes; content need not parse


def test_pcap_writer_rotates_by_size_and_reads_back(tmp_path: Path) -> None:
    writer = RotatingPcapWriter(tmp_path, "live-x", LINKTYPE_ETHERNET, rotate_bytes=2048, keep=100)
    written = [(1_800_000_000.0 + i * 0.25, _frame(i)) for i in range(40)]
    for ts, frame in written:
        writer.write(ts, frame)
    writer.close()
    files = writer.files()
    assert len(files) == writer.files_written == 4  # 24-byte header + 10 records of 190 bytes fit in 2048
    assert all(f.stat().st_size <= 2048 for f in files)
    assert files[0].name == "live-x-20270115T080000.000000Z.pcap", files[0].name
    back = [(ts, data) for path in files for _, ts, linktype, data in CaptureReader(path)
            if linktype == LINKTYPE_ETHERNET]
    assert back == written


def test_pcap_writer_keeps_newest_files_across_runs(tmp_path: Path) -> None:
    old = tmp_path / "live-x-20000101T000000.000000Z.pcap"
    old.write_bytes(file_header(LINKTYPE_ETHERNET))
    other = tmp_path / "other-20000101T000000.000000Z.pcap"  # another prefix: never touched
    other.write_bytes(b"")
    writer = RotatingPcapWriter(tmp_path, "live-x", LINKTYPE_ETHERNET, rotate_bytes=1024, keep=2)
    for i in range(30):
        writer.write(1_800_000_000.0 + i, _frame(i))
    writer.close()
    files = writer.files()
    assert len(files) == 2 and not old.exists() and other.exists()
    assert writer.files_deleted == writer.files_written - 2 + 1
    last = [ts for _, ts, _, _ in CaptureReader(files[-1])]
    assert last[-1] == 1_800_000_029.0
    # Two files starting in the same microsecond get distinct names, still in start order.
    clash = RotatingPcapWriter(tmp_path / "clash", "c", LINKTYPE_ETHERNET, rotate_bytes=1024, keep=5)
    for _ in range(12):
        clash.write(1_800_000_000.0, _frame(0))
    clash.close()
    assert [p.name for p in clash.files()] == [f"c-20270115T080000.00000{i}Z.pcap" for i in range(3)]

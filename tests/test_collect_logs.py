"""The log collector: CSMS logs in, the same records as a capture of the same session out.

(a) a real ``ocpp`` central system logs its traffic (the library's own lines, and our JSONL)
while real charge points talk to it, captured live on ``lo``; (b) the collector is SIGKILLed at
each dangerous point and restarted, and every line's record is in Kafka exactly once; (c)
rotation, truncation, partial lines and bad lines; (d) ``analyze`` on a log raises the alerts
it raises on the equivalent capture.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chargewatch.catalog import load_catalog
from chargewatch.config import Config, with_overrides
from chargewatch.embedded import analyze
from chargewatch.model import OcppMessage, Record
from chargewatch.redaction import Redactor
from collectors.frames import DecodeContext
from collectors.logs import LogCollector, read_log
from collectors.pcap import read_capture
from collectors.stats import CollectorStats, DeadLetter
from tests.conftest import TEST_KEY, Services, isolated_config
from tests.kafka_helpers import cli, read_topic, write_config
from tests.peers import record

DEMO = Path(__file__).resolve().parent.parent / "samples" / "demo.pcap"
SCENARIOS = ["v16_session", "v201_session", "v16_replay", "v16_direction"]
CSMS_CLASSES = ("_Csms16", "_Csms201", "_Csms21")

# SteVe's WebSocketLogger (github.com/steve-community/steve, commit 02fcf52f1b95ad944f40a1ba2938d1672f2ef05a,
# src/main/java/de/rwth/idsg/steve/ocpp/ws/WebSocketLogger.java): line 43 logs
# "[chargeBoxId={}, sessionId={}] Sending: {}", line 55 "[chargeBoxId={}, sessionId={}] Received: {}",
# line 35 "... Connection is established"; laid out by src/main/resources/logback-spring-prod.xml
# (commit 583017d144b12ba729a17056ae9031021f0ef356, line 4): "[%-5level] %d %c \(%thread\) - %msg%n".
_STEVE = "[INFO ] 2026-11-25 14:32:43,{ms} de.rwth.idsg.steve.ocpp.ws.WebSocketLogger (http-nio-8080-exec-{t}) - "
_BOX = "[chargeBoxId=CP-7, sessionId=4a1f] "
STEVE_LOG = "".join(_STEVE.format(ms=ms, t=t) + _BOX + msg + "\n" for ms, t, msg in [
    ("100", 1, "Connection is established"),
    ("120", 1, 'Received: [2,"m1","Authorize",{"idTag":"TAG1234"}]'),
    ("130", 2, 'Sending: [3,"m1",{"idTagInfo":{"status":"Accepted"}}]')])


class ListSink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.dead: list[DeadLetter] = []

    def record(self, record: Record) -> None:
        self.records.append(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead.append(letter)


def _config(**collector: Any) -> Config:
    return with_overrides(Config(), redaction={"key": TEST_KEY}, collector=collector)


def _collector(paths: list[Path], saved: dict[str, Any] | None = None, fmt: str = "auto",
               **collector: Any) -> tuple[LogCollector, ListSink, CollectorStats]:
    sink, stats = ListSink(), CollectorStats()
    ctx = DecodeContext(sink, stats, Redactor(bytes.fromhex(TEST_KEY)), load_catalog(), "logs",
                        _config(**collector).collector.max_message_bytes)
    return LogCollector(paths, ctx, fmt, _config(**collector).collector, saved), sink, stats


def _view(records: list[Record]) -> Counter[tuple[Any, ...]]:
    """What must match between a capture and a log: sender, ids, type, action, redacted payload."""
    return Counter((r.charge_point_id, r.direction.value, r.message_id, r.message_type, r.action,
                    json.dumps(r.payload, sort_keys=True)) for r in records if isinstance(r, OcppMessage))


# --------------------------------------------------------------------------- (a) live central system


class _CsmsOnly(logging.Filter):
    """Keep the ``ocpp`` lines of the central system's ChargePoint objects (the peers share a process)."""

    def filter(self, rec: logging.LogRecord) -> bool:
        frame = inspect.currentframe()
        while frame is not None:
            owner = frame.f_locals.get("self")
            if frame.f_code.co_filename.endswith("charge_point.py") and owner is not None:
                return type(owner).__name__ in CSMS_CLASSES
            frame = frame.f_back
        return False


class _JsonlHandler(logging.Handler):
    """The JSONL a CSMS integrator would emit, built from the ocpp library's send/receive calls."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.out = path.open("a", encoding="utf-8")

    def emit(self, rec: logging.LogRecord) -> None:
        if rec.msg not in ("%s: send %s", "%s: receive message %s") or not isinstance(rec.args, tuple):
            return
        cp_id, frame = rec.args
        direction = "out" if rec.msg == "%s: send %s" else "in"
        self.out.write(json.dumps({"ts": rec.created, "charge_point_id": cp_id, "direction": direction,
                                   "frame": frame}) + "\n")

    def close(self) -> None:
        self.out.close()
        super().close()


def test_central_system_logs_give_the_records_of_a_live_capture(tmp_path: Path) -> None:
    text_log, jsonl_log = tmp_path / "csms.log", tmp_path / "csms.jsonl"
    logger = logging.getLogger("ocpp")
    text = logging.FileHandler(text_log, encoding="utf-8")
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    formatter.converter = time.gmtime  # UTC, as the README asks operators to configure
    text.setFormatter(formatter)
    handlers: list[logging.Handler] = [text, _JsonlHandler(jsonl_log)]
    for handler in handlers:
        handler.addFilter(_CsmsOnly())
        logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        frames = record(tmp_path / "live.pcap", SCENARIOS, compression=True)
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    captured = ListSink()
    read_capture(tmp_path / "live.pcap", captured, Redactor(bytes.fromhex(TEST_KEY)), load_catalog(), 1 << 20)
    expected = _view(captured.records)
    assert sum(expected.values()) == len(frames) > 40
    for path, fmt in ((text_log, "ocpp-lib"), (jsonl_log, "jsonl"), (text_log, "auto")):
        sink = ListSink()
        stats = read_log(path, sink, Redactor(bytes.fromhex(TEST_KEY)), load_catalog(),
                         _config(input_format=fmt).collector)
        assert _view(sink.records) == expected, fmt
        # The library logs the traceback of the Reset it cannot handle: kept aside, line by line.
        traceback = [base64.b64decode(d.excerpt_b64).decode() for d in sink.dead]
        assert stats.errors == {"unknown_log_line": len(traceback)} if traceback else not stats.errors, fmt
        assert (traceback[0] if fmt != "jsonl" else "") == ("Traceback (most recent call last):" if traceback else "")
        # One connection per charge point; the log's order is the central system's.
        assert len({r.connection_id for r in sink.records}) == 4
    assert "TAG1234" not in json.dumps([r.to_dict() for r in sink.records])


# --------------------------------------------------------------------------- (b) crash and restart


def _big_log(path: Path, lines: int) -> list[int]:
    """A JSONL log of lines messages (and a few bad lines); returns every line's start offset."""
    offsets, out, pos = [], [], 0
    for n in range(lines):
        if n % 500 == 7:
            line = "garbage that is no log line"
        else:
            frame = json.dumps([2, f"id-{n}", "Heartbeat", {}]) if n % 2 else json.dumps([3, f"id-{n - 1}", {}])
            line = json.dumps({"ts": 1_795_000_000 + n / 100, "charge_point_id": f"CP-{(n + 1) // 2 % 7}",
                               "direction": "in" if n % 2 else "out", "frame": frame, "ocpp_version": "1.6"})
        offsets.append(pos)
        out.append(line + "\n")
        pos += len(line) + 1
    path.write_text("".join(out))
    return offsets


@pytest.mark.parametrize("kill_at", ["lines_sent:3", "flushed:4", "state_saved:2"])
def test_sigkill_and_restart_publish_every_line_exactly_once(services: Services, tmp_path: Path,
                                                             kill_at: str) -> None:
    config = with_overrides(isolated_config(services), collector={"status_dir": str(tmp_path / "status")})
    cfg_path = write_config(config, tmp_path)
    log_path = tmp_path / "csms.jsonl"
    offsets = _big_log(log_path, 6000)
    args = ("collect", "logs", str(log_path), "--once", "--state-file", str(tmp_path / "state.json"),
            "--batch-bytes", "65536", "--status-name", "crash")
    killed = cli(cfg_path, *args, "--kill-at", kill_at)
    assert killed.returncode == -9, killed.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert 0 < next(iter(state["files"].values()))["offset"] < offsets[-1]  # died mid-file
    done = cli(cfg_path, *args)
    assert done.returncode == 0, done.stderr
    published = read_topic(services.kafka, config.kafka.messages_topic)
    dead = read_topic(services.kafka, config.kafka.deadletter_topic)
    sources = Counter(r["source"] for r in published + dead)
    assert sources == Counter(f"csms.jsonl#{o}" for o in offsets)  # each line once, none lost
    assert len(dead) == 12 and {d["kind"] for d in dead} == {"unknown_log_line"}
    # Answers inherit their CALL's action across the restart; only the first answer and those to
    # the garbage lines' places answer nothing.
    assert Counter(r["action"] for r in published) == {"Heartbeat": 6000 - 12 - 1 - 12, None: 13}
    status = json.loads((tmp_path / "status" / "logs-crash.json").read_text())
    assert status["running"] is False and 0 < status["frames"] < len(offsets)  # the restarted run's lines
    if kill_at.startswith("flushed"):  # acknowledged but not checkpointed: found in Kafka, not re-sent
        assert status["details"]["redelivered_skipped"] > 0


# --------------------------------------------------------------------------- (c) files that change


def _jsonl_line(n: int, cp: str = "CP-1", frame: str | None = None) -> str:
    frame = frame if frame is not None else json.dumps([2, f"m{n}", "Heartbeat", {}])
    return json.dumps({"ts": f"2026-11-25T14:32:{n:02d}.000Z", "charge_point_id": cp, "direction": "cp->csms",
                       "frame": frame}) + "\n"


def test_rotation_truncation_and_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "csms.jsonl"
    log.write_text(_jsonl_line(1) + _jsonl_line(2)[:30])  # second line still being written
    collector, sink, _ = _collector([log])
    collector.poll()
    assert [r.message_id for r in sink.records] == ["m1"]
    saved = json.loads(json.dumps(collector.state()))
    assert saved["files"][str(log)]["offset"] == len(_jsonl_line(1))  # the partial line waits
    collector.close()
    with log.open("a") as fh:  # its newline arrives while the collector is stopped, then more
        fh.write(_jsonl_line(2)[30:] + _jsonl_line(3))
    collector, sink, _ = _collector([log], saved)
    collector.poll()
    assert [r.message_id for r in sink.records] == ["m2", "m3"]
    log.rename(tmp_path / "csms.jsonl.1")  # rotation: the old file gets a last line, a new file starts
    with (tmp_path / "csms.jsonl.1").open("a") as fh:
        fh.write(_jsonl_line(4))
    log.write_text(_jsonl_line(5))
    collector.poll()
    collector.poll()
    assert [r.message_id for r in sink.records] == ["m2", "m3", "m4", "m5"]
    with log.open("a") as fh:
        fh.write(_jsonl_line(6) + _jsonl_line(7))
    collector.poll()
    log.write_text(_jsonl_line(8))  # copytruncate-style: same inode, shorter than the offset
    collector.poll()
    assert [r.message_id for r in sink.records][-3:] == ["m6", "m7", "m8"]
    assert dict(collector.events()) == {"rotated": 1, "truncated": 1}
    state = collector.state()
    assert state["files"][str(log)]["ino"] == os.stat(log).st_ino


def test_rotation_while_stopped_finishes_the_old_file(tmp_path: Path) -> None:
    log = tmp_path / "csms.jsonl"
    log.write_text(_jsonl_line(1))
    collector, sink, _ = _collector([log])
    collector.poll()
    saved = collector.state()
    collector.close()
    with log.open("a") as fh:
        fh.write(_jsonl_line(2))
    log.rename(tmp_path / "csms.jsonl.1")
    log.write_text(_jsonl_line(3))
    collector, sink, _ = _collector([log], saved)
    collector.poll()
    collector.poll()
    assert [r.message_id for r in sink.records] == ["m2", "m3"]


def test_bad_lines_are_counted_and_dead_lettered(tmp_path: Path) -> None:
    log = tmp_path / "csms.log"
    big = json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "A" * 5000}])
    log.write_text("".join([
        "not a log line at all\n",
        '{"ts": "2026-11-25T14:32:01Z", "charge_point_id": "CP-1", "direction": "in", "frame": "[2, \\"a\\""}\n',
        '{"ts": "2026-11-25T14:32:02Z", "charge_point_id": "CP-1", "direction": "in"\n',
        '{"charge_point_id": "CP-1", "direction": "in", "frame": "[2,\\"b\\",\\"Heartbeat\\",{}]"}\n',
        _jsonl_line(3, frame=big),
        "{" + "x" * 100_000 + "\n",
        STEVE_LOG,
        "2026-11-25 14:32:44,000 INFO ocpp CP 9: send [3,\"zz\",{}]\n",
    ]))
    collector, sink, stats = _collector([log], max_message_bytes=4096)
    collector.poll()
    kinds = Counter(d.kind for d in sink.dead)
    assert kinds == {"unknown_log_line": 1, "invalid_json": 1, "invalid_log_json": 1, "log_bad_time": 1,
                     "oversized_message": 1, "oversized_log_line": 1}
    assert dict(stats.errors) == dict(kinds)
    assert all(d.excerpt_b64 for d in sink.dead)
    steve = [r for r in sink.records if r.charge_point_id == "CP-7"]
    assert [(r.direction.value, r.message_type, r.action) for r in steve] == [
        ("cp->csms", 2, "Authorize"), ("csms->cp", 3, "Authorize")]
    assert steve[0].payload["idTag"].startswith("pt_") and steve[0].ts == 1795617163.12
    assert [(r.charge_point_id, r.direction.value, r.flags) for r in sink.records[2:]] == [
        ("CP 9", "csms->cp", ("unmatched_response",))]
    assert stats.ignored["other_log_line"] == 1  # SteVe's "Connection is established"


# --------------------------------------------------------------------------- (d) analyze


def test_analyze_gives_the_same_alerts_on_a_log_as_on_the_capture(tmp_path: Path) -> None:
    config = _config()
    clear: list[Record] = []
    analyze([DEMO], with_overrides(config, redaction={"enabled": False}), on_record=clear.append)
    sent = [json.loads(line) for line in DEMO.with_name("demo.sent.jsonl").read_text().splitlines()]
    text: dict[tuple[Any, ...], list[str]] = {}  # a replay shares its original's key: taken in order
    for f in sent:
        text.setdefault((f["cp_id"], f["sender"], *json.loads(f["text"])[:2]), []).append(f["text"])
    log = tmp_path / "csms.jsonl"
    with log.open("w") as fh:
        for r in clear:
            if isinstance(r, OcppMessage):
                fh.write(json.dumps({"ts": r.ts, "charge_point_id": r.charge_point_id, "direction": r.direction.value,
                                     "frame": text[(r.charge_point_id, r.sender, r.message_type, r.message_id)].pop(0),
                                     "ocpp_version": r.ocpp_version, "connection_id": r.connection_id}) + "\n")
    on_capture, on_log = analyze([DEMO], config), analyze([log], config)
    assert not on_log.unreadable and not on_log.dead_letters

    def view(alerts: list[Any]) -> list[tuple[Any, ...]]:
        # CW-MITM-003 judges the HTTP upgrade, which a message log does not show.
        return [(a.id, a.rule_id, a.charge_point_id, a.ts, a.message_id, a.action, a.severity)
                for a in alerts if a.rule_id != "CW-MITM-003"]

    assert view(on_log.alerts) == view(on_capture.alerts)
    assert "CW-REPLAY-001" in {a.rule_id for a in on_log.alerts}
    steve = tmp_path / "steve.log"
    steve.write_text(STEVE_LOG)
    assert not analyze([steve], config).unreadable

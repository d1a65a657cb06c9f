"""Compare what the pcap collector extracted with the frames the peers really sent.

Shared by the golden tests (committed captures) and the live-capture acceptance test. The
ground truth is the list of :class:`~tests.peers.SentFrame` logged by the peers; the expected
record of each frame is derived from its text alone (message type, id, action, payload
redacted with the same :class:`~chargewatch.redaction.Redactor`), then compared field by field
with the collector's :class:`~chargewatch.model.OcppMessage` records, per connection and in
order.
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from chargewatch.catalog import load_catalog
from chargewatch.model import Direction, MessageType, Record
from chargewatch.redaction import Redactor
from collectors.pcap import read_capture
from collectors.stats import CollectorStats, DeadLetter
from tests.collector_helpers import ListSink
from tests.peers import SentFrame

GOLDEN_KEY = b"golden-key"
MAX_MESSAGE = 1 << 20
# OCPP version each charge point of tests.peers speaks (the subprotocol its scenario offers).
VERSIONS = {"CP16-001": "1.6", "RDAM 123": "2.0.1", "CP16-ATTACK": "1.6", "CP16-DIR": "1.6"}
PATH_PREFIX = "/ocpp/"


@dataclass
class Collected(ListSink):
    """Everything the collector produced for one capture, also in one output-ordered list."""

    output: list[Record | DeadLetter] = field(default_factory=list)
    stats: CollectorStats = field(default_factory=CollectorStats)

    def record(self, record: Record) -> None:
        super().record(record)
        self.output.append(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        super().dead_letter(letter)
        self.output.append(letter)

    def lines(self) -> list[str]:
        """Records and dead letters as JSON lines (sorted keys), in output order."""
        return [json.dumps(item.to_dict(), sort_keys=True, ensure_ascii=False) for item in self.output]


def collect(path: Path, key: bytes = GOLDEN_KEY) -> Collected:
    """Run the pcap collector over one capture with redaction key ``key``."""
    sink = Collected()
    sink.stats = read_capture(path, sink, Redactor(key), load_catalog(), MAX_MESSAGE)
    return sink


class Msg(NamedTuple):
    """The comparable view of one message: what the frame text alone determines."""

    sender: str
    message_type: int
    message_id: str
    action: str | None
    payload: Any

    def line(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True, ensure_ascii=False)


def expected_messages(frames: Sequence[SentFrame], redactor: Redactor) -> dict[str, list[Msg]]:
    """Per charge point, in send order: the message each frame should become once collected."""
    calls: dict[tuple[str, str, str], str] = {}  # (cp, caller, message id) -> action
    out: dict[str, list[Msg]] = defaultdict(list)
    for frame in frames:
        value = json.loads(frame.text)
        mtype, message_id = value[0], value[1]
        other = "csms" if frame.sender == "cp" else "cp"
        if mtype == MessageType.CALL:
            action, payload = value[2], value[3]
            calls[(frame.cp_id, frame.sender, message_id)] = action
        elif mtype == MessageType.CALLRESULT:
            action, payload = calls.pop((frame.cp_id, other, message_id), None), value[2]
        elif mtype == MessageType.CALLERROR:
            action = calls.pop((frame.cp_id, other, message_id), None)
            payload = {"errorCode": value[2], "errorDescription": value[3], "errorDetails": value[4]}
        else:
            raise AssertionError(f"peers sent a frame of unexpected type {mtype}: {frame.text}")
        out[frame.cp_id].append(Msg(frame.sender, mtype, message_id, action, redactor.payload(action, payload)))
    return dict(out)


def actual_messages(collected: Collected) -> dict[str, list[Msg]]:
    """Per charge point, in output order: the comparable view of every collected message."""
    out: dict[str, list[Msg]] = defaultdict(list)
    for m in collected.messages:
        out[m.charge_point_id].append(Msg(m.sender, m.message_type, m.message_id, m.action, m.payload))
    return dict(out)


def _diff(expected: Sequence[Msg], actual: Sequence[Msg]) -> str:
    lines = difflib.unified_diff([m.line() for m in expected], [m.line() for m in actual], "sent by the peers",
                                 "extracted by the collector", lineterm="", n=1)
    return "\n".join(lines)


def check_frames(collected: Collected, frames: Sequence[SentFrame], key: bytes = GOLDEN_KEY) -> None:
    """Assert the collector extracted exactly ``frames``: nothing more, less, reordered or altered."""
    problems = [f"{type(d).__name__} {d.to_dict()}" for d in collected.dead_letters]
    assert not problems and collected.stats.error_total == 0, (
        f"collector errors {dict(collected.stats.errors)}; dead letters: {problems}")
    assert frames, "the peers sent no frame: nothing to compare"
    assert collected.stats.messages == len(frames), (
        f"collector counted {collected.stats.messages} messages, peers sent {len(frames)}")
    expected = expected_messages(frames, Redactor(key))
    actual = actual_messages(collected)
    assert sorted(actual) == sorted(expected), f"charge point ids: extracted {sorted(actual)}, sent {sorted(expected)}"
    counts = {name: getattr(collected.stats, name) for name in ("tcp_connections", "websocket_connections")}
    assert counts == dict.fromkeys(counts, len(expected)), f"{counts}: expected one per charge point ({len(expected)})"
    for cp_id, sent in expected.items():
        got = actual[cp_id]
        assert got == sent, f"{cp_id}: {len(got)} messages extracted, {len(sent)} sent\n{_diff(sent, got)}"
        _check_connection(collected, cp_id)


def _check_connection(collected: Collected, cp_id: str) -> None:
    """One WebSocket connection per charge point: upgrade, version, addresses, directions, close."""
    version = VERSIONS.get(cp_id)
    assert version is not None, f"framecheck.VERSIONS lacks the charge point {cp_id!r}"
    messages = [m for m in collected.messages if m.charge_point_id == cp_id]
    connections = {m.connection_id for m in messages}
    assert len(connections) == 1, f"{cp_id}: messages spread over connections {sorted(connections)}"
    (conn,) = connections
    events = [e for e in collected.events if e.connection_id == conn]
    assert [e.kind for e in events] == ["upgrade", "closed"], f"{cp_id}: connection events {events}"
    upgrade = events[0]
    assert upgrade.status == 101, f"{cp_id}: upgrade answered {upgrade.status}"
    assert upgrade.charge_point_id == cp_id, f"{cp_id}: upgrade names {upgrade.charge_point_id!r}"
    assert upgrade.path == PATH_PREFIX + quote(cp_id, safe=""), f"{cp_id}: upgrade path {upgrade.path!r}"
    assert upgrade.ocpp_version == version, f"{cp_id}: upgrade version {upgrade.ocpp_version!r}, expected {version}"
    client = (upgrade.client_ip, upgrade.client_port)
    server = (upgrade.server_ip, upgrade.server_port)
    for m in messages:
        where = f"{cp_id} message {m.message_id} ({m.source})"
        assert m.ocpp_version == version, f"{where}: ocpp_version {m.ocpp_version!r}, expected {version}"
        src, dst = (m.src_ip, m.src_port), (m.dst_ip, m.dst_port)
        if m.direction is Direction.CP_TO_CSMS:
            assert (src, dst) == (client, server), f"{where}: cp->csms from {src} to {dst}"
        else:
            assert (src, dst) == (server, client), f"{where}: csms->cp from {src} to {dst}"
        assert m.flags == (), f"{where}: unexpected flags {m.flags}"


__all__ = ["GOLDEN_KEY", "VERSIONS", "Collected", "Msg", "check_frames", "collect", "expected_messages"]

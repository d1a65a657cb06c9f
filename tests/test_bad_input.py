"""Bad input never crashes the pcap collector: cut and corrupted files, broken packets, non-OCPP frames.

Every problem is counted in ``stats.errors`` under its kind and has a dead letter; a file that is
not a capture at all raises CaptureError.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections import Counter
from pathlib import Path

import pytest

from chargewatch.errors import CaptureError
from chargewatch.model import ConnectionEvent, OcppMessage
from collectors.stats import CollectorStats
from tests.collector_helpers import (
    DEMO,
    V201_PCAPNG,
    ListSink,
    capture,
    client_frame,
    decode,
    tcp_frame,
    upgraded_flow,
)
from tests.pcapgen import PcapWriter, ocpp_session

DEMO_BYTES = DEMO.read_bytes()
V201_BYTES = V201_PCAPNG.read_bytes()


def pcap_records(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of every record of a little-endian classic pcap."""
    out, pos = [], 24
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        out.append((pos, pos + 16 + caplen))
        pos += 16 + caplen
    return out


def pcapng_blocks(data: bytes) -> list[tuple[int, int, int]]:
    """(type, start, end) of every block of a little-endian pcapng."""
    out, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        out.append((btype, pos, pos + blen))
        pos += blen
    return out


def consistent(stats: CollectorStats, sink: ListSink) -> None:
    """Every error has exactly one dead letter; counters match what the sink got; all serialisable."""
    assert sorted(sink.kinds) == sorted(stats.errors.elements())
    assert stats.messages == len(sink.messages)
    assert stats.connection_events == len(sink.events)
    json.loads("[" + ",".join(sink.dump().splitlines()) + "]")


def message_dicts(sink: ListSink) -> list[dict[str, object]]:
    return [m.to_dict() for m in sink.messages]


FULL_STATS, FULL = decode(DEMO)


def test_demo_decodes_cleanly() -> None:
    assert (FULL_STATS.packets, FULL_STATS.messages, FULL_STATS.connection_events, dict(FULL_STATS.errors)) == (
        102, 50, 8, {})
    assert len(pcap_records(DEMO_BYTES)) == 102


# --------------------------------------------------------------------------- not captures


@pytest.mark.parametrize("content", [b"", b"\xd4", b"\xd4\xc3\xb2", b"GET / HTTP/1.1\r\n\r\n",
                                     random.Random(3).randbytes(5000), b"\x00" * 100])
def test_not_a_capture_raises_capture_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    magic = content[:4].hex() or "empty"
    with pytest.raises(CaptureError, match=rf"x\.pcap: not a pcap or pcapng file \(magic {magic}\)"):
        decode(path)


def test_missing_file_raises_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"missing\.pcap: cannot open"):
        decode(tmp_path / "missing.pcap")


# --------------------------------------------------------------------------- truncated pcap


@pytest.mark.parametrize("cut", [4, 5, 16, 23])
def test_pcap_cut_in_file_header(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "demo.pcap"
    path.write_bytes(DEMO_BYTES[:cut])
    stats, sink = decode(path)
    assert (sink.records, dict(stats.errors), stats.packets) == ([], {"truncated_file_header": 1}, 0)
    assert [(d.kind, d.detail, d.source) for d in sink.dead_letters] == [
        ("truncated_file_header", f"{path}: file header cut at byte {cut}", "demo.pcap")]


def cut_pcap(tmp_path: Path, cut: int) -> tuple[CollectorStats, ListSink]:
    path = tmp_path / "demo.pcap"  # same name as the original: same record sources
    path.write_bytes(DEMO_BYTES[:cut])
    return decode(path)


@pytest.mark.parametrize("record", [1, 4, 9, 30, 57, 80, 102])
@pytest.mark.parametrize("where", ["header", "data", "last_byte"])
def test_pcap_cut_inside_a_record(tmp_path: Path, record: int, where: str) -> None:
    start, end = pcap_records(DEMO_BYTES)[record - 1]
    cut = {"header": start + 7, "data": start + 16 + 10, "last_byte": end - 1}[where]
    stats, sink = cut_pcap(tmp_path, cut)
    # everything decoded from the records before the cut, exactly as in the whole file
    assert message_dicts(sink) == [m for m in message_dicts(FULL) if int(str(m["source"]).split("#")[1]) < record]
    boundary_stats, boundary = cut_pcap(tmp_path, start)
    assert (sink.records, stats.packets) == (boundary.records, record - 1)
    assert stats.errors == boundary_stats.errors + Counter(truncated_record=1)
    detail = (f"record header cut at byte {start}" if where == "header" else
              f"record {record} at byte {start} cut after {cut - start - 16} of {end - start - 16} bytes")
    assert [(d.kind, d.detail) for d in sink.dead_letters if d.kind == "truncated_record"] == [
        ("truncated_record", f"{tmp_path / 'demo.pcap'}: {detail}")]
    consistent(stats, sink)


@pytest.mark.parametrize("tail", [b"junk", b"\xff" * 40, struct.pack("<IIII", 1, 0, 100, 100) + b"x" * 10])
def test_garbage_appended_to_pcap(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "demo.pcap"
    path.write_bytes(DEMO_BYTES + tail)
    stats, sink = decode(path)
    assert [r.to_dict() for r in sink.records] == [r.to_dict() for r in FULL.records]
    n = len(DEMO_BYTES)
    expected = {4: ("truncated_record", f"record header cut at byte {n}"),
                40: ("corrupt_record", f"record at byte {n} claims 4294967295 bytes"),
                26: ("truncated_record", f"record 103 at byte {n} cut after 10 of 100 bytes")}[len(tail)]
    assert [(d.kind, d.detail) for d in sink.dead_letters] == [(expected[0], f"{path}: {expected[1]}")]
    assert dict(stats.errors) == {expected[0]: 1}


# --------------------------------------------------------------------------- truncated pcapng


def v201_cut(tmp_path: Path, cut: int) -> tuple[Path, CollectorStats, ListSink]:
    path = tmp_path / "v201_plain.pcapng"
    path.write_bytes(V201_BYTES[:cut])
    return path, *decode(path)


@pytest.mark.parametrize("cut", [4, 11, 27])
def test_pcapng_cut_in_section_header(tmp_path: Path, cut: int) -> None:
    _, stats, sink = v201_cut(tmp_path, cut)
    assert (sink.records, dict(stats.errors), sink.kinds) == ([], {"corrupt_file_header": 1}, ["corrupt_file_header"])


FULL_V201_STATS, FULL_V201 = decode(V201_PCAPNG)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 15, 30])
@pytest.mark.parametrize("offset", [3, 9, -1])
def test_pcapng_cut_inside_a_block(tmp_path: Path, block: int, offset: int) -> None:
    blocks = pcapng_blocks(V201_BYTES)
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 1] + [6] * 28 and FULL_V201_STATS.messages == 14
    _, start, end = blocks[block]
    cut = start + offset if offset >= 0 else end + offset
    path, stats, sink = v201_cut(tmp_path, cut)
    packets_before = max(0, block - 3)
    assert message_dicts(sink) == [m for m in message_dicts(FULL_V201)
                                   if int(str(m["source"]).split("#")[1]) <= packets_before]
    assert stats.packets == packets_before
    assert [(d.kind, d.detail) for d in sink.dead_letters if d.kind == "truncated_record"] == [(
        "truncated_record",
        f"{path}: pcapng block after packet {packets_before} unreadable at byte {start} of {cut}")]
    assert stats.errors["truncated_record"] == 1 and set(stats.errors) <= {"truncated_record", "truncated_message"}
    consistent(stats, sink)


def test_pcapng_cut_at_block_boundary_is_clean(tmp_path: Path) -> None:
    _, start, _ = pcapng_blocks(V201_BYTES)[13]
    _, stats, sink = v201_cut(tmp_path, start)
    assert (stats.packets, dict(stats.errors), sink.dead_letters) == (10, {}, [])
    assert message_dicts(sink) == [m for m in message_dicts(FULL_V201) if int(str(m["source"]).split("#")[1]) <= 10]
    assert len(sink.messages) == 3


def test_garbage_appended_to_pcapng(tmp_path: Path) -> None:
    path = tmp_path / "v201_plain.pcapng"
    path.write_bytes(V201_BYTES + b"\x00" * 7)
    stats, sink = decode(path)
    assert [r.to_dict() for r in sink.records] == [r.to_dict() for r in FULL_V201.records]
    assert dict(stats.errors) == {"truncated_record": 1}
    assert [(d.kind, d.detail) for d in sink.dead_letters] == [(
        "truncated_record", f"{path}: pcapng block after packet 28 unreadable at byte {len(V201_BYTES)} "
                            f"of {len(V201_BYTES) + 7}")]


# --------------------------------------------------------------------------- frames that are not OCPP-J

BAD_FRAMES = [
    (b"[2,", "invalid_json"), (b"", "invalid_json"),
    (b'{"a":1}', "not_ocppj_array"), (b'"text"', "not_ocppj_array"), (b"[]", "not_ocppj_array"),
    (b'[7,"1",{}]', "unknown_message_type"), (b'["2","1","Heartbeat",{}]', "bad_message_type"),
    (b'[2,"1","Heartbeat"]', "bad_frame_shape"), (b'[3,"1",{},{}]', "bad_frame_shape"),
    (b'[2,"1",5,{}]', "bad_frame_shape"),
    (b'[2,"1","Heartbeat",{"x":"\xff\xfe"}]', "invalid_utf8"), (b"[2," * 5000, "json_too_deep"),
    (b'[2,"1","DataTransfer",' + b"[" * 70 + b"]" * 70 + b"]", "json_too_deep"),
]


def test_frames_that_are_not_ocppj(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w)
        for data, _ in BAD_FRAMES:
            flow.send(True, client_frame(data))
        flow.send(True, client_frame(b'[2,"ok","Heartbeat",{}]'))
        flow.close()

    stats, sink = decode(capture(tmp_path / "bad.pcap", build))
    assert sink.kinds == [kind for _, kind in BAD_FRAMES]
    assert [base64.b64decode(d.excerpt_b64) for d in sink.dead_letters] == [data[:512] for data, _ in BAD_FRAMES]
    assert {d.charge_point_id for d in sink.dead_letters} == {"CP001"}
    assert [(m.message_id, m.action) for m in sink.messages] == [("ok", "Heartbeat")]
    assert dict(stats.errors) == {"invalid_json": 2, "not_ocppj_array": 3, "unknown_message_type": 1,
                                  "bad_message_type": 1, "bad_frame_shape": 3, "invalid_utf8": 1, "json_too_deep": 2}
    consistent(stats, sink)


# --------------------------------------------------------------------------- broken packets


def ip_total(frame: bytes, total: int) -> bytes:
    return frame[:16] + struct.pack("!H", total) + frame[18:]


GOOD = tcp_frame(b"hello")  # Ethernet 14 + IPv4 20 + TCP 20 + 5
BROKEN_PACKETS = {
    "truncated_link_header": [GOOD[:10], GOOD[:12] + b"\x81\x00\x00"],  # short Ethernet, cut VLAN tag
    "truncated_ip_header": [GOOD[:14 + 10], GOOD[:12] + b"\x86\xdd" + b"\x60" + b"\x00" * 20],
    "bad_ip_header": [GOOD[:14] + b"\x44" + GOOD[15:]],  # IHL 4 words
    "truncated_packet": [ip_total(GOOD, 200), GOOD[:12] + b"\x86\xdd\x60\x00\x00\x00\x00\x64\x06\x40" + b"\x00" * 32],
    "truncated_tcp_header": [ip_total(GOOD[:14 + 20 + 10], 30)],
    "bad_tcp_header": [GOOD[:14 + 20 + 12] + b"\xf0" + GOOD[47:], GOOD[:14 + 20 + 12] + b"\x40" + GOOD[47:]],
}


def test_broken_packets_are_counted(tmp_path: Path) -> None:
    udp = GOOD[:23] + b"\x11" + GOOD[24:]
    frag = GOOD[:20] + b"\x20\x00" + GOOD[22:]  # more-fragments flag
    arp = GOOD[:12] + b"\x08\x06" + b"\x00" * 28

    def build(w: PcapWriter) -> None:
        for frames in BROKEN_PACKETS.values():
            for frame in frames:
                w.write(1_700_000_000.0, frame)
        for frame in (udp, frag, arp):
            w.write(1_700_000_000.0, frame)
        ocpp_session(w, [(True, '[2,"1","Heartbeat",{}]')])

    path = capture(tmp_path / "pk.pcap", build)
    stats, sink = decode(path)
    expected = [kind for kind, frames in BROKEN_PACKETS.items() for _ in frames]
    assert [(d.kind, d.detail, d.source) for d in sink.dead_letters] == [
        (kind, "malformed packet", f"pk.pcap#{i}") for i, kind in enumerate(expected, 1)]
    frames = [f for fs in BROKEN_PACKETS.values() for f in fs]
    assert [base64.b64decode(d.excerpt_b64) for d in sink.dead_letters] == frames
    assert dict(stats.errors) == {kind: len(frames) for kind, frames in BROKEN_PACKETS.items()}
    assert dict(stats.ignored) == {"non_tcp": 1, "ip_fragment": 1, "arp": 1}
    assert [(type(r), getattr(r, "action", None)) for r in sink.records] == [
        (ConnectionEvent, None), (OcppMessage, "Heartbeat"), (ConnectionEvent, None)]
    consistent(stats, sink)


# --------------------------------------------------------------------------- fuzz


def mutate(rng: random.Random, data: bytes) -> bytes:
    """1..8 random byte flips, deletions or insertions after the 24-byte file header."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(24, len(out))
        op = rng.random()
        if op < 0.6:
            out[pos] = rng.randrange(256)
        elif op < 0.8:
            del out[pos:pos + rng.randint(1, 64)]
        else:
            out[pos:pos] = rng.randbytes(rng.randint(1, 64))
    return bytes(out)


def test_fuzzed_demo_never_crashes(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    path = tmp_path / "fuzz.pcap"
    seen: set[str] = set()
    for _ in range(300):
        path.write_bytes(mutate(rng, DEMO_BYTES))
        try:
            stats, sink = decode(path, max_message=1 << 16)
        except CaptureError:
            continue
        consistent(stats, sink)
        seen.update(stats.errors)
    # the mutations reach every layer: file, packet, WebSocket and OCPP-J decoding
    assert {"corrupt_record", "truncated_record", "bad_tcp_header", "tcp_gap", "ws_bad_opcode", "invalid_json"} <= seen

"""The native capture front end (native/, ``chargewatch_native``) against the Python reference.

Python stays the reference decoder: for every capture here, decoded whole and as each share of
a parallel analysis, both paths must give the same records, dead letters and counters. The
corpus: the shipped demo capture (real ``ocpp`` peers), a benchmark-style fleet with deflate,
crafted captures of the cases the native side handles specially (port reuse of a connection
another share decodes, within one batch and across batches; IPv6 and VLAN frames it leaves to
Python; every way a file can end early; both byte orders, nanosecond timestamps) and a few
hundred seeded mutants of them (header bytes flipped, packets cut, dropped, duplicated, swapped,
files truncated).

``make test`` builds the extension: a missing one fails here, it is not skipped.
"""

from __future__ import annotations

import random
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chargewatch.errors import ConfigError
from collectors import native
from collectors.frames import share_bounds
from collectors.pcap import read_capture
from collectors.pcapfile import CaptureReader
from collectors.websocket import WsMessage, WsProblem
from tests.collector_helpers import CATALOG, DEMO, REDACTOR, ListSink
from tests.pcapgen import PcapWriter, TcpFlow, WsSession, ocpp_session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_analyze import generate  # noqa: E402

SHARES = [(0, 1), (0, 2), (1, 2)]
HB = '[2,"{id}","Heartbeat",{{}}]'
HB_RESULT = '[3,"{id}",{{"currentTime":"2024-01-01T00:00:00Z"}}]'
BOOT = '[2,"{id}","BootNotification",{{"chargePointVendor":"V","chargePointModel":"M"}}]'


def outcome(path: Path, decoder: str, share: tuple[int, int], max_message: int = 1 << 20) -> dict[str, Any]:
    """Everything one decoder made of path: records, dead letters, counters."""
    sink = ListSink()
    stats = read_capture(path, sink, REDACTOR, CATALOG, max_message, share=share, decoder=decoder)
    return {"records": [r.to_dict() for r in sink.records],
            "dead_letters": [d.to_dict() for d in sink.dead_letters],
            "stats": stats.to_dict()}


def assert_same(path: Path, max_message: int = 1 << 20) -> list[dict[str, Any]]:
    """Both decoders agree on path for every share; returns the native outcomes."""
    found = []
    for share in SHARES:
        reference = outcome(path, "python", share, max_message)
        ours = outcome(path, "native", share, max_message)
        for part in ("stats", "dead_letters", "records"):
            assert ours[part] == reference[part], f"{path.name} share {share}: {part} differ"
        found.append(ours)
    return found


@pytest.fixture(params=[1, 3, 4096], ids=["batch1", "batch3", "batch4096"])
def batch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The native reader's batch size: items read ahead before Python handles any of them."""
    monkeypatch.setattr(native, "BATCH", request.param)
    return int(request.param)


def test_the_extension_is_installed() -> None:
    assert native.available(), "chargewatch_native is missing: `make install` builds it (needs Rust's cargo)"


def test_decoder_setting_is_checked(tmp_path: Path) -> None:
    assert native.open_native(DEMO, "python") is None
    assert native.open_native(DEMO, "native") is not None
    with pytest.raises(ConfigError, match="pcap_decoder must be one of auto, native, python"):
        native.open_native(DEMO, "rust")
    pcapng = tmp_path / "x.pcapng"
    with PcapWriter(str(pcapng), pcapng=True) as w:
        ocpp_session(w, [(True, HB.format(id="1"))])
    assert native.open_native(pcapng, "native") is not None  # a plain pcapng file
    simple = _pcapng(tmp_path / "spb.pcapng", [(3, struct.pack("<I", 4) + b"abcd")])
    assert native.open_native(simple, "native") is None  # not plain: the Python reader
    assert outcome(simple, "native", (0, 1)) == outcome(simple, "python", (0, 1))


def test_demo_capture_of_real_peers(batch: int) -> None:
    found = assert_same(DEMO)
    assert len(found[0]["records"]) > 30
    assert found[1]["records"] or found[2]["records"]


def test_fleet_with_deflate(tmp_path: Path) -> None:
    path = tmp_path / "fleet.pcap"
    cap = generate(str(path), 3000, 24, deflate=True, seed=5, pcapng=False)
    whole, first, second = assert_same(path)
    messages = [r for r in whole["records"] if "message_type" in r]
    assert len(messages) == cap.messages
    assert first["records"] and second["records"]  # both shares own charge points
    assert len(first["records"]) + len(second["records"]) == len(whole["records"])


def _cp_of_share(share: tuple[int, int], avoid: str = "") -> str:
    """A charge point identity that share owns."""
    low, high = share_bounds(*share)
    for n in range(1000):
        name = f"CP{n:03d}"
        if name != avoid and low <= zlib.crc32(name.encode()) % (1 << 16) < high:
            return name
    raise AssertionError("no charge point found")


def _reuse_capture(path: Path, ending: str) -> Path:
    """A connection of share 1's charge point, then the same addresses and ports reused at once
    by share 0's charge point; ending says how the first one ends (fin, rst, or none: a new SYN)."""
    foreign, own = _cp_of_share((1, 2)), _cp_of_share((0, 2))
    with PcapWriter(str(path)) as w:
        for i, cp in enumerate((foreign, own)):
            flow = TcpFlow(w, ("10.0.0.7", 40000), ("10.0.0.1", 9000), 1_700_000_000.0 + i, client_isn=1000 + i * 7777)
            ws = WsSession(flow, path=f"/ocpp/{cp}", seed=i)
            ws.open()
            for n in range(6):
                ws.message(True, BOOT.format(id=f"{cp}-b{n}") if n == 0 else HB.format(id=f"{cp}-{n}"))
                ws.message(False, HB_RESULT.format(id=f"{cp}-{n}"))
            if i == 0 and ending == "fin":
                ws.close()
            elif i == 0 and ending == "rst":
                flow.reset(True)
        # A third connection of the foreign charge point from another port, left open at the end.
        flow = TcpFlow(w, ("10.0.0.8", 40001), ("10.0.0.1", 9000), 1_700_000_005.0)
        ws = WsSession(flow, path=f"/ocpp/{foreign}", seed=9)
        ws.open()
        ws.message(True, HB.format(id="open-1"))
    return path


@pytest.mark.parametrize("ending", ["fin", "rst", "none"])
def test_port_reuse_of_a_connection_another_share_decodes(tmp_path: Path, batch: int, ending: str) -> None:
    path = _reuse_capture(tmp_path / f"reuse-{ending}.pcap", ending)
    _, first, second = assert_same(path)
    own_ids = [r["message_id"] for r in first["records"] if "message_id" in r]
    assert len(own_ids) == 12  # every message of the reused connection reached share 0
    assert {r["charge_point_id"] for r in second["records"]} == {_cp_of_share((1, 2))}


def test_ipv6_vlan_and_other_frames_take_the_python_path(tmp_path: Path, batch: int) -> None:
    path = tmp_path / "mixed.pcap"
    with PcapWriter(str(path)) as w:
        ocpp_session(w, [(True, BOOT.format(id="v4")), (False, HB_RESULT.format(id="v4"))], path="/ocpp/V4")
        ocpp_session(w, [(True, BOOT.format(id="v6")), (False, HB_RESULT.format(id="v6"))], path="/ocpp/V6",
                     client=("fd00::1", 40000), server=("fd00::2", 9000))
    vlan = tmp_path / "vlan.pcap"
    _rewrite(path, vlan, lambda frame: frame[:12] + b"\x81\x00\x00\x07" + frame[12:] if frame[12:14] == b"\x08\x00"
             else frame)
    for capture in (path, vlan):
        whole = assert_same(capture)[0]
        assert {r["message_id"] for r in whole["records"] if "message_id" in r} == {"v4", "v6"}


def _records(path: Path) -> list[tuple[float, bytes]]:
    return [(ts, data) for _, ts, _, data in CaptureReader(path)]


def _write(path: Path, packets: list[tuple[float, bytes]]) -> Path:
    with PcapWriter(str(path)) as w:
        for ts, frame in packets:
            w.write(ts, frame)
    return path


def _rewrite(source: Path, dest: Path, change: Callable[[bytes], bytes]) -> Path:
    return _write(dest, [(ts, change(frame)) for ts, frame in _records(source)])


def _reencode(source: Path, dest: Path, big_endian: bool, nanosecond: bool) -> Path:
    """The same packets in another classic pcap flavour."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    scale = 1_000_000_000 if nanosecond else 1_000_000
    with dest.open("wb") as out:
        out.write(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, 1))
        for ts, frame in _records(source):
            sec, frac = divmod(round(ts * scale), scale)
            out.write(struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame)
    return dest


@pytest.mark.parametrize(("big_endian", "nanosecond"), [(True, False), (False, True), (True, True)])
def test_byte_orders_and_nanosecond_timestamps(tmp_path: Path, big_endian: bool, nanosecond: bool) -> None:
    path = _reencode(DEMO, tmp_path / "flavour.pcap", big_endian, nanosecond)
    assert len(assert_same(path)[0]["records"]) > 30


def _ends(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Every way a file can end early, and a record that claims too much."""
    yield "empty header", data[:4]
    yield "header cut", data[:13]
    yield "only the header", data[:24]
    yield "record header cut", data[:24 + 9]
    yield "record cut", data[:24 + 16 + 20]
    yield "cut late", data[:len(data) - 31]
    huge = bytearray(data)
    struct.pack_into("<I", huge, 24 + 8, (1 << 20) + 1)
    yield "claims too much", bytes(huge)


def test_files_that_end_early(tmp_path: Path) -> None:
    data = DEMO.read_bytes()
    for name, cut in _ends(data):
        path = tmp_path / (name.replace(" ", "-") + ".pcap")
        path.write_bytes(cut)
        whole = assert_same(path)[0]
        if name != "only the header":
            assert whole["dead_letters"], name  # the problem is reported, the same way


def _mutate(packets: list[tuple[float, bytes]], rng: random.Random) -> list[tuple[float, bytes]]:
    out = list(packets)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        ts, frame = out[i]
        kind = rng.choice(("flip", "flip", "cut", "drop", "dup", "swap"))
        if kind == "flip" and frame:
            at = rng.randrange(min(len(frame), 70))
            frame = frame[:at] + bytes([frame[at] ^ (1 << rng.randrange(8))]) + frame[at + 1:]
            out[i] = (ts, frame)
        elif kind == "cut":
            out[i] = (ts, frame[:rng.randrange(len(frame) + 1)])
        elif kind == "drop" and len(out) > 1:
            del out[i]
        elif kind == "dup":
            out.insert(i, (ts, frame))
        elif kind == "swap" and i + 1 < len(out):
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def test_mutants_decode_alike(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    sources = [DEMO, _reuse_capture(tmp_path / "reuse.pcap", "fin")]
    fleet = tmp_path / "fleet.pcap"
    generate(str(fleet), 600, 6, deflate=True, seed=11, pcapng=False)
    sources.append(fleet)
    checked = 0
    for source in sources:
        packets = _records(source)
        for n in range(80):
            path = _write(tmp_path / f"mutant-{source.stem}-{n}.pcap", _mutate(packets, rng))
            if n % 10 == 0:  # some end mid-record too
                data = path.read_bytes()
                path.write_bytes(data[:rng.randrange(24, len(data))])
            assert_same(path, max_message=rng.choice((1 << 20, 200)))
            checked += 1
    assert checked == 240


def _frames(rng: random.Random) -> Iterator[bytes]:
    """Frames for the scanners: markers in any case, escapes, digit runs around 19, non-ASCII."""
    from chargewatch.redaction import RAW_MARKERS

    pieces = [*(m.decode() for m in RAW_MARKERS), "IdTag", "ID_TAG", "idTa", "pass word", "\\u0069dTag", "\\",
              "u", "[", "{", "]", "}", "\"", ":", ",", "İ", "ß", "é", "0", "9" * 18, "1" * 19, "12345", "-", ".",
              "Heartbeat", "currentTime", "2024-06-10T06:13:20.000Z"]
    for m in RAW_MARKERS:  # every marker alone and in mixed case
        yield m
        yield bytes(c ^ 0x20 if rng.random() < 0.5 and 97 <= c <= 122 else c for c in m)
    for n in (17, 18, 19, 20, 40):
        yield b'[2,"x","MeterValues",{"v":' + b"7" * n + b"}]"
        yield b"[" * n + b"]" * n + b"{" * (n // 2)
    for _ in range(3000):
        yield "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))).encode()
        yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))


def test_native_scanners_agree_with_the_python_reference() -> None:
    import chargewatch_native

    from chargewatch.redaction import may_hold_secrets
    from collectors.ocppj import scan_json

    rng = random.Random(7)
    checked = secrets = long_runs = 0
    for frame in _frames(rng):
        reference = may_hold_secrets(frame)
        assert chargewatch_native.may_hold_secrets(frame) == reference, frame
        assert chargewatch_native.scan_json(frame) == scan_json(frame), frame
        checked += 1
        secrets += reference
        long_runs += scan_json(frame)[1]
    assert checked > 6000 and secrets > 500 and long_runs > 100  # both answers well represented


# --------------------------------------------------------------------------- pcapng


def _block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", kind, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)


def _option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _pcapng(path: Path, blocks: list[tuple[int, bytes]], order: str = "<",
            interfaces: tuple[tuple[int, bytes], ...] = ((1, b""),)) -> Path:
    """A pcapng file: section header, interfaces (link type, raw options), then blocks."""
    shb = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    out = _block(0x0A0D0D0A, shb, order)
    for linktype, options in interfaces:
        out += _block(1, struct.pack(order + "HHI", linktype, 0, 262144) + options, order)
    out += b"".join(_block(kind, body, order) for kind, body in blocks)
    path.write_bytes(out)
    return path


def _epb(frame: bytes, units: int, intid: int = 0, options: bytes = b"", order: str = "<") -> tuple[int, bytes]:
    body = struct.pack(order + "IIIII", intid, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
    return 6, body + frame + b"\0" * (-len(frame) % 4) + options


def _raw_ip(frame: bytes) -> bytes:
    return frame[14:]  # an Ethernet frame without its link header: LINKTYPE_RAW


@pytest.mark.parametrize("nanosecond", [False, True], ids=["usec", "nsec"])
def test_pcapng_fleet(tmp_path: Path, nanosecond: bool) -> None:
    path = tmp_path / "fleet.pcapng"
    generate(str(path), 3000, 24, deflate=True, seed=5, pcapng=True)
    if nanosecond:  # the same packets with nanosecond stamps: beyond 2**53, divided exactly as Python does
        ns = tmp_path / "fleet-ns.pcapng"
        with PcapWriter(str(ns), pcapng=True, nanosecond=True) as w:
            for ts, frame in _records(path):
                w.write(ts + 0.123456789, frame)
        path = ns
    assert native.open_native(path, "native") is not None
    whole = assert_same(path)[0]
    assert len(whole["records"]) > 1000


@pytest.mark.parametrize("order", ["<", ">"], ids=["little", "big"])
def test_pcapng_interfaces_resolutions_and_extra_blocks(tmp_path: Path, order: str) -> None:
    frames = _records(_reuse_capture(tmp_path / "reuse.pcap", "fin"))
    res2 = _option(9, bytes([0x80 | 20]), order)  # 2**-20 s
    res3 = _option(9, bytes([3]), order)  # milliseconds
    blocks: list[tuple[int, bytes]] = [(4, b"\1\0\4\0\x7f\0\0\1name\0\0\0\0")]  # name resolution: skipped
    for n, (ts, frame) in enumerate(frames):
        intid = n % 3
        data = _raw_ip(frame) if intid == 1 else frame
        units = round(ts * (1 << 20)) if intid == 1 else round(ts * (1000 if intid == 2 else 1_000_000))
        flags = _option(2, struct.pack(order + "I", 1), order)
        options = _option(1, b"a comment", order) + flags if n % 5 == 0 else b""
        blocks.append(_epb(data, units, intid, options, order))
    blocks.append((5, struct.pack(order + "III", 0, 0, 0)))  # interface statistics: skipped
    path = _pcapng(tmp_path / "mixed.pcapng", blocks, order, interfaces=((1, b""), (101, res2), (1, res3)))
    assert native.open_native(path, "native") is not None
    whole = assert_same(path)[0]
    assert len([r for r in whole["records"] if "message_id" in r]) >= 12


def test_pcapng_files_that_are_not_plain_go_to_python(tmp_path: Path) -> None:
    frame = _records(DEMO)[5][1]
    cases = {
        "simple packet block": [(3, struct.pack("<I", len(frame)) + frame)],
        "unknown interface": [_epb(frame, 1, intid=4)],
        "flags of 3 bytes": [_epb(frame, 1, options=_option(2, b"abc"))],
        "process information": [_epb(frame, 1, options=_option(0x8001, b"\0\0\0\0"))],
        "second section": [_epb(frame, 1), (0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))],
    }
    for name, blocks in cases.items():
        path = _pcapng(tmp_path / (name.replace(" ", "-") + ".pcapng"), blocks)
        assert native.open_native(path, "native") is None, name
        assert_same(path)
    odd = _pcapng(tmp_path / "tsresol.pcapng", [_epb(frame, 1)], interfaces=((1, _option(9, b"\6\6")),))
    assert native.open_native(odd, "native") is None
    data = _pcapng(tmp_path / "ok.pcapng", [_epb(frame, 10**6 * 1_700_000_000)]).read_bytes()
    for cut in (len(data) - 1, len(data) - 4, len(data) - 13, 40):
        path = tmp_path / f"cut-{cut}.pcapng"
        path.write_bytes(data[:cut])
        assert native.open_native(path, "native") is None
        assert_same(path)


def test_pcapng_mutants_decode_alike(tmp_path: Path) -> None:
    rng = random.Random(44)
    source = tmp_path / "fleet.pcapng"
    generate(str(source), 400, 6, deflate=True, seed=3, pcapng=True)
    packets = _records(source)
    plain = 0
    for n in range(60):
        path = tmp_path / f"mutant-{n}.pcapng"
        with PcapWriter(str(path), pcapng=True) as w:
            for ts, frame in _mutate(packets, rng):
                w.write(ts, frame)
        if n % 3 == 0:  # bytes of the file itself, block headers included
            data = bytearray(path.read_bytes())
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(data))
                data[at] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
        plain += native.open_native(path, "native") is not None
        assert_same(path, max_message=rng.choice((1 << 20, 200)))
    assert plain >= 40  # most mutants stay plain and exercise the native reader


# --------------------------------------------------------------------------- WebSocket frames


def _stream(rng: random.Random, deflate: bool, takeover: bool) -> bytes:
    """A random frame stream: text, binary, fragments, control frames inside messages, compressed
    or not, masked or not, with a corruption now and then."""
    from tests.pcapgen import DeflateCompressor, ws_frame

    compressor = DeflateCompressor(no_context_takeover=not takeover)
    out = b""
    for _ in range(rng.randint(1, 12)):
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        text = rng.choice([HB.format(id=rng.randrange(99)).encode(), BOOT.format(id="b").encode(), noise,
                           b"x" * rng.randint(100, 400)])
        compressed = deflate and rng.random() < 0.7
        data = compressor.compress(text) if compressed else text
        mask = rng.getrandbits(32).to_bytes(4, "big") if rng.random() < 0.5 else None
        pieces = rng.randint(1, 3)
        step = max(1, len(data) // pieces)
        chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        for n, chunk in enumerate(chunks):
            opcode = (2 if rng.random() < 0.2 else 1) if n == 0 else 0
            out += ws_frame(chunk, opcode=opcode, fin=n == len(chunks) - 1, mask=mask, rsv1=compressed and n == 0)
            if rng.random() < 0.15:
                control = b"\x03\xe9bye" if rng.random() < 0.3 else b"hb"
                out += ws_frame(control, opcode=rng.choice((8, 9, 10)), mask=mask)
    if rng.random() < 0.3:  # corruption: a flipped bit somewhere
        at = rng.randrange(len(out))
        out = out[:at] + bytes([out[at] ^ (1 << rng.randrange(8))]) + out[at + 1:]
    return out


def test_native_frame_decoder_agrees_with_the_python_reference() -> None:
    from collectors.websocket import DeflateParams, FrameDecoder, frame_decoder

    rng = random.Random(1125)
    problems = messages = 0
    for n in range(1500):
        deflate, takeover = rng.random() < 0.6, rng.random() < 0.6
        params = DeflateParams(no_context_takeover=not takeover) if deflate else None
        max_message = rng.choice((1 << 20, 350, 120))
        reference, native_decoder = FrameDecoder(params, max_message), frame_decoder(params, max_message)
        assert type(native_decoder).__module__ == "chargewatch_native"
        stream = b"".join(_stream(rng, deflate, takeover) for _ in range(rng.randint(1, 3)))
        pos = 0
        while pos < len(stream):
            step = rng.choice((1, 2, 7, 64, 1000, len(stream)))
            chunk, pos = stream[pos:pos + step], pos + step
            expected, got = reference.feed(chunk), native_decoder.feed(chunk)
            assert got == expected, f"stream {n} at byte {pos}"
            state = (reference.desynced, reference.undecoded_bytes, reference.close_code, reference.in_message)
            assert (native_decoder.desynced, native_decoder.undecoded_bytes, native_decoder.close_code,
                    native_decoder.in_message) == state, f"stream {n} at byte {pos}"
            messages += sum(isinstance(item, WsMessage) for item in expected)
            problems += sum(isinstance(item, WsProblem) for item in expected)
    assert messages > 5000 and problems > 300  # both kinds of outcome well represented

"""collectors.websocket.FrameDecoder: framing, fragmentation, permessage-deflate, limits and broken frames,
directly and through crafted captures.

Every test runs twice: with the Python decoder (the reference) and with its native twin
(``chargewatch_native.FrameDecoder``), which must behave the same."""

from __future__ import annotations

import random
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from collectors.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    DeflateParams,
    FrameDecoder,
    WsMessage,
    WsProblem,
    frame_decoder,
)
from tests.collector_helpers import MASK, capture, client_frame, decode, server_frame, texts, upgraded_flow
from tests.pcapgen import DeflateCompressor, PcapWriter, ocpp_session, ws_frame

Item = WsMessage | WsProblem


def _native(deflate: DeflateParams | None, max_message: int) -> Any:
    decoder = frame_decoder(deflate, max_message)
    assert type(decoder).__module__ == "chargewatch_native", "the native extension is not installed (make install)"
    return decoder


@pytest.fixture(autouse=True, params=["python", "native"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test with this module's FrameDecoder replaced by the native one (second run);
    the captures decoded through read_capture use the native one by default and the Python one
    with decoder="python", which tests/test_native_decoder.py compares."""
    if request.param == "native":
        monkeypatch.setattr(sys.modules[__name__], "FrameDecoder", _native)
    return str(request.param)
HEARTBEAT = b'[2,"1","Heartbeat",{}]'
METER = (b'[2,"m1","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2024-01-01T00:00:00Z",'
         b'"sampledValue":[{"value":"1234.5","measurand":"Energy.Active.Import.Register"}]}]}]')
METER2 = METER.replace(b'"m1"', b'"m2"').replace(b"1234.5", b"1240.0")
METER3 = METER.replace(b'"m1"', b'"m3"').replace(b"1234.5", b"1251.5")


def feed(decoder: FrameDecoder, data: bytes, chunk: int | None = None) -> list[Item]:
    """Feed data whole (chunk=None) or in pieces of chunk bytes; everything the decoder returned."""
    if chunk is None:
        return decoder.feed(data)
    out: list[Item] = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i:i + chunk])
    return out


def msg(data: bytes, wire: int, *, masked: bool = False, compressed: bool = False, opcode: int = OP_TEXT) -> WsMessage:
    return WsMessage(opcode, data, wire, compressed, masked)


def bfinal(message: bytes) -> bytes:
    """A message compressed as one finished deflate stream (BFINAL=1, RFC 7692 section 7.2.3.3)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return comp.compress(message) + comp.flush(zlib.Z_FINISH)


# --------------------------------------------------------------------------- framing


def test_masked_client_frame() -> None:
    frame = ws_frame(HEARTBEAT, mask=MASK)
    assert frame[6:] != HEARTBEAT  # really masked on the wire
    assert FrameDecoder(None, 1 << 20).feed(frame) == [msg(HEARTBEAT, 6 + len(HEARTBEAT), masked=True)]


@pytest.mark.parametrize(("size", "header"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)])
@pytest.mark.parametrize("masked", [False, True])
def test_length_forms(size: int, header: int, masked: bool) -> None:
    payload = random.Random(size).randbytes(size)
    frame = ws_frame(payload, opcode=OP_BINARY, mask=MASK if masked else None)
    wire = header + (4 if masked else 0) + size
    assert len(frame) == wire
    expected = [msg(payload, wire, masked=masked, opcode=OP_BINARY)]
    assert FrameDecoder(None, 1 << 20).feed(frame) == expected
    assert feed(FrameDecoder(None, 1 << 20), frame, 1000) == expected


@pytest.mark.parametrize(("bits", "header"), [(16, 4), (64, 10)])
def test_non_minimal_length_on_small_payload(bits: int, header: int) -> None:
    frame = ws_frame(HEARTBEAT, mask=MASK, force_len_bits=bits)
    assert frame[1] & 0x7F == (126 if bits == 16 else 127)
    assert FrameDecoder(None, 1 << 20).feed(frame) == [msg(HEARTBEAT, header + 4 + len(HEARTBEAT), masked=True)]


def fragmented_stream(close: bool = True) -> tuple[bytes, list[Item]]:
    """Text message in 3 fragments with ping, pong and a 16-bit-length fragment between them, then close 1001."""
    parts = [b'[2,"7","DataTransfer",{"vendorId":"', b"x" * 200, b'"}]']
    stream = (ws_frame(parts[0], fin=False, mask=MASK)
              + ws_frame(b"ping-1", opcode=OP_PING, mask=MASK)
              + ws_frame(parts[1], opcode=OP_CONT, fin=False, mask=MASK)
              + ws_frame(b"", opcode=OP_PONG, mask=MASK)
              + ws_frame(parts[2], opcode=OP_CONT, mask=MASK, force_len_bits=64))
    if close:
        stream += ws_frame(struct.pack("!H", 1001) + b"going away", opcode=OP_CLOSE, mask=MASK)
    wire = (2 + 4 + len(parts[0])) + (4 + 4 + 200) + (10 + 4 + len(parts[2]))
    return stream, [msg(b"".join(parts), wire, masked=True)]


def test_fragments_with_interleaved_control_frames_and_close_code() -> None:
    stream, expected = fragmented_stream()
    decoder = FrameDecoder(None, 1 << 20)
    assert decoder.feed(stream) == expected
    assert decoder.close_code == 1001
    assert (decoder.desynced, decoder.undecoded_bytes) == (False, 0)


def test_close_without_code_leaves_close_code_unset() -> None:
    decoder = FrameDecoder(None, 1 << 20)
    assert decoder.feed(ws_frame(b"", opcode=OP_CLOSE) + ws_frame(HEARTBEAT)) == [msg(HEARTBEAT, 24)]
    assert decoder.close_code is None


def mixed_stream() -> tuple[bytes, list[Item]]:
    """Fragmented + control frames, 16/64-bit lengths and compressed messages sharing a context."""
    frag, expected = fragmented_stream(close=False)
    comp = DeflateCompressor()
    c1, c2 = comp.compress(METER), comp.compress(METER2)
    frames = [ws_frame(METER, mask=MASK, force_len_bits=64), ws_frame(c1, rsv1=True, mask=MASK),
              ws_frame(c2[:5], rsv1=True, fin=False, mask=MASK), ws_frame(c2[5:], opcode=OP_CONT, mask=MASK)]
    expected = [*expected, msg(METER, len(frames[0]), masked=True),
                msg(METER, len(frames[1]), masked=True, compressed=True),
                msg(METER2, len(frames[2]) + len(frames[3]), masked=True, compressed=True)]
    return frag + b"".join(frames), expected


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7, 64, 1000])
def test_any_chunking_gives_the_same_messages(chunk: int | None) -> None:
    stream, expected = mixed_stream()
    assert feed(FrameDecoder(DeflateParams(), 1 << 20), stream, chunk) == expected


def test_random_chunking_gives_the_same_messages() -> None:
    stream, expected = mixed_stream()
    rng = random.Random(7)
    for _ in range(20):
        decoder, out, pos = FrameDecoder(DeflateParams(), 1 << 20), [], 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            out += decoder.feed(stream[pos:pos + step])
            pos += step
        assert out == expected


# --------------------------------------------------------------------------- permessage-deflate


def zframes(*payloads: bytes) -> list[bytes]:
    """One unmasked compressed (RSV1) text frame per payload."""
    return [ws_frame(p, rsv1=True) for p in payloads]


def test_context_takeover_second_message_needs_the_first() -> None:
    comp = DeflateCompressor()
    c1, c2, c3 = comp.compress(METER), comp.compress(METER2), comp.compress(METER3)
    assert len(c2) < len(c1) // 4  # c2 is mostly back-references into METER
    f1, f2, f3 = zframes(c1, c2, c3)
    assert FrameDecoder(DeflateParams(), 1 << 20).feed(f2) == [WsProblem(
        "ws_inflate_error", "permessage-deflate: Error -3 while decompressing data: invalid distance too far back",
        False, c2)]
    assert FrameDecoder(DeflateParams(), 1 << 20).feed(f1 + f2 + f3) == [
        msg(METER, len(f1), compressed=True), msg(METER2, len(f2), compressed=True),
        msg(METER3, len(f3), compressed=True)]


@pytest.mark.parametrize("params", [DeflateParams(no_context_takeover=True), DeflateParams()])
def test_finished_deflate_streams_each_decode(params: DeflateParams) -> None:
    f1, f2 = zframes(bfinal(METER), bfinal(METER2))
    assert FrameDecoder(params, 1 << 20).feed(f1 + ws_frame(HEARTBEAT) + f2) == [
        msg(METER, len(f1), compressed=True), msg(HEARTBEAT, 24), msg(METER2, len(f2), compressed=True)]


def noisy_message(n: int) -> bytes:
    """A DataTransfer whose data does not compress well."""
    return b'[2,"b","DataTransfer",{"vendorId":"v","data":"' + random.Random(n).randbytes(n).hex().encode() + b'"}]'


def test_no_context_takeover_fresh_context_per_message() -> None:
    comp = DeflateCompressor(no_context_takeover=True)
    f1, f2 = zframes(comp.compress(METER), comp.compress(METER2))
    assert FrameDecoder(DeflateParams(True), 1 << 20).feed(f2) == [msg(METER2, len(f2), compressed=True)]
    # A message too big to keep leaves no hole in a context that is never shared: the next one decodes.
    [big] = zframes(comp.compress(noisy_message(300)))
    assert len(f1) < 250 < len(big)
    decoder = FrameDecoder(DeflateParams(True), 250)
    assert decoder.feed(f1 + big + f2) == [
        msg(METER, len(f1), compressed=True),
        WsProblem("oversized_message", f"message of {len(big)} wire bytes exceeds 250", False),
        msg(METER2, len(f2), compressed=True)]
    assert (decoder.desynced, decoder.undecoded_bytes) == (False, 0)


def test_oversized_with_context_takeover_stops_the_direction() -> None:
    comp = DeflateCompressor()
    f1, big, f2 = zframes(comp.compress(METER), comp.compress(noisy_message(300)), comp.compress(METER2))
    decoder = FrameDecoder(DeflateParams(), 250)
    assert decoder.feed(f1 + big + f2) == [
        msg(METER, len(f1), compressed=True),
        WsProblem("oversized_message", f"message of {len(big)} wire bytes exceeds 250", False)]
    assert decoder.desynced
    assert decoder.feed(ws_frame(HEARTBEAT)) == []
    assert decoder.undecoded_bytes == len(big) - 4 + len(f2) + 24  # all after big's header


def test_compressed_message_fragmented_with_ping() -> None:
    comp = DeflateCompressor()
    data = comp.compress(METER)
    thirds = [data[:10], data[10:20], data[20:]]
    stream = (ws_frame(thirds[0], rsv1=True, fin=False, mask=MASK) + ws_frame(b"hb", opcode=OP_PING, mask=MASK)
              + ws_frame(thirds[1], opcode=OP_CONT, fin=False, mask=MASK)
              + ws_frame(thirds[2], opcode=OP_CONT, mask=MASK))
    assert FrameDecoder(DeflateParams(), 1 << 20).feed(stream) == [
        msg(METER, 3 * 6 + len(data), masked=True, compressed=True)]


def test_inflating_beyond_the_limit_is_oversized() -> None:
    comp = DeflateCompressor(no_context_takeover=True)
    bomb = comp.compress(b"[" + b" " * 5000 + b"]")
    small = comp.compress(HEARTBEAT)
    out = FrameDecoder(DeflateParams(True), 1000).feed(ws_frame(bomb, rsv1=True) + ws_frame(small, rsv1=True))
    assert out == [WsProblem("oversized_message", "message inflates beyond 1000 bytes", False),
                   msg(HEARTBEAT, 2 + len(small), compressed=True)]


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_oversized_messages_are_skipped_and_the_next_decode(chunk: int | None) -> None:
    single = ws_frame(b"[" + b" " * 198 + b"]", mask=MASK)  # one 200-byte frame: 4 + 4 + 200 wire bytes
    pieces = [ws_frame(b"[" + b" " * 59, fin=False), ws_frame(b" " * 60, opcode=OP_CONT, fin=False),
              ws_frame(b" " * 59 + b"]", opcode=OP_CONT)]  # 3 x 60 bytes: each fits, together they do not
    stream = ws_frame(HEARTBEAT) + single + ws_frame(HEARTBEAT) + b"".join(pieces) + ws_frame(HEARTBEAT)
    decoder = FrameDecoder(None, 100)
    assert feed(decoder, stream, chunk) == [
        msg(HEARTBEAT, 24), WsProblem("oversized_message", "message of 208 wire bytes exceeds 100", False),
        msg(HEARTBEAT, 24), WsProblem("oversized_message", "message of 186 wire bytes exceeds 100", False),
        msg(HEARTBEAT, 24)]
    assert (decoder.desynced, decoder.undecoded_bytes) == (False, 0)


def test_message_of_exactly_the_limit_decodes() -> None:
    assert FrameDecoder(None, len(HEARTBEAT)).feed(ws_frame(HEARTBEAT)) == [msg(HEARTBEAT, 24)]


# --------------------------------------------------------------------------- broken frames

BROKEN = {
    "reserved_opcode_3": (ws_frame(b"{}", opcode=3), "ws_bad_opcode", "reserved opcode 3"),
    "reserved_opcode_11": (ws_frame(b"", opcode=11), "ws_bad_opcode", "reserved opcode 11"),
    "rsv1_without_extension": (ws_frame(HEARTBEAT, rsv1=True), "ws_bad_rsv", "unexpected RSV bits 100 on opcode 1"),
    "rsv2": (bytes([0xA1]) + ws_frame(HEARTBEAT)[1:], "ws_bad_rsv", "unexpected RSV bits 010 on opcode 1"),
    "continuation_without_start": (ws_frame(HEARTBEAT, opcode=OP_CONT), "ws_orphan_continuation",
                                   "continuation frame without a started message"),
    "control_over_125": (ws_frame(b"p" * 126, opcode=OP_PING), "ws_bad_control_frame",
                         "control frame opcode 9 fin=True len=126"),
    "fragmented_control": (ws_frame(b"p", opcode=OP_PING, fin=False), "ws_bad_control_frame",
                           "control frame opcode 9 fin=False len=1"),
    "text_inside_fragmented": (ws_frame(b"[", fin=False) + ws_frame(HEARTBEAT), "ws_unfinished_message",
                               "new data message before the previous one finished"),
    "length_top_bit": (b"\x81\x7f" + b"\x80" + b"\x00" * 7 + HEARTBEAT, "ws_bad_length",
                       "64-bit length with the top bit set"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
@pytest.mark.parametrize("chunk", [None, 1])
def test_broken_frame_is_fatal_and_counted(name: str, chunk: int | None) -> None:
    bad, kind, detail = BROKEN[name]
    after = ws_frame(HEARTBEAT) * 2
    decoder = FrameDecoder(None, 1 << 20)
    out = feed(decoder, ws_frame(HEARTBEAT) + bad + after, chunk)
    assert out[0] == msg(HEARTBEAT, 24)
    assert [(p.kind, p.detail, p.fatal) for p in out[1:]] == [  # type: ignore[union-attr]
        (kind, f"{detail}; rest of this direction not decoded", True)]
    first_bad = len(bad) - len(ws_frame(HEARTBEAT)) if name == "text_inside_fragmented" else 0
    if chunk is None:
        assert out[1].raw == (bad[first_bad:] + after)[:64]  # type: ignore[union-attr]
    assert decoder.desynced
    assert decoder.undecoded_bytes == len(bad) - first_bad + len(after)
    assert decoder.feed(ws_frame(HEARTBEAT)) == []
    assert decoder.undecoded_bytes == len(bad) - first_bad + len(after) + 24


# --------------------------------------------------------------------------- through captures


def test_capture_masked_lengths_and_fragments(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w)
        flow.send(True, client_frame(HEARTBEAT, force_len_bits=64))
        flow.send(False, server_frame(b'[3,"1",{"currentTime":"2024-01-01T00:00:00Z"}]', force_len_bits=16))
        flow.send(True, fragmented_stream(close=False)[0])
        flow.send(True, client_frame(b"\x03\xe8", opcode=OP_CLOSE))
        flow.close()

    stats, sink = decode(capture(tmp_path / "ws.pcap", build))
    assert texts(sink) == [
        ("cp->csms", 2, "1", "Heartbeat", {}),
        ("csms->cp", 3, "1", "Heartbeat", {"currentTime": "2024-01-01T00:00:00Z"}),
        ("cp->csms", 2, "7", "DataTransfer", {"vendorId": "x" * 200})]
    assert [m.frame_size for m in sink.messages] == [14 + 22, 4 + 46, fragmented_stream()[1][0].wire_size]
    assert [m.flags for m in sink.messages] == [(), (), ()]
    assert (stats.messages, stats.websocket_connections, dict(stats.errors)) == (3, 1, {})


@pytest.mark.parametrize("takeover", [True, False])
@pytest.mark.parametrize("fragments", [1, 3])
def test_capture_deflate_session(tmp_path: Path, takeover: bool, fragments: int) -> None:
    sent = [(i % 2 == 0, (METER if i % 2 == 0 else b'[3,"m1",{}]').decode()) for i in range(6)]
    session = capture(tmp_path / "z.pcap", lambda w: ocpp_session(
        w, sent, deflate=True, context_takeover=takeover, fragments=fragments, ping_every=2))
    stats, sink = decode(session)
    assert [m.payload for m in sink.messages] == [
        {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [
            {"value": "1234.5", "measurand": "Energy.Active.Import.Register"}]}]} if i % 2 == 0 else {}
        for i in range(6)]
    assert [m.action for m in sink.messages] == ["MeterValues"] * 6
    assert [m.flags for m in sink.messages] == [()] * 6
    assert sink.events[0].extensions == ("permessage-deflate" if takeover else
                                         "permessage-deflate; client_no_context_takeover; server_no_context_takeover")
    assert (stats.messages, dict(stats.errors)) == (6, {})


@pytest.mark.parametrize("side_without_takeover", ["client", "server"])
def test_capture_context_takeover_negotiated_per_side(tmp_path: Path, side_without_takeover: str) -> None:
    """An oversized compressed message is only survivable on the side that negotiated no_context_takeover."""
    comp = {True: DeflateCompressor(no_context_takeover=side_without_takeover == "client"),
            False: DeflateCompressor(no_context_takeover=side_without_takeover == "server")}

    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w, extensions=f"permessage-deflate; {side_without_takeover}_no_context_takeover")
        for from_client in (True, False):
            frame = client_frame if from_client else server_frame
            for text in (METER, noisy_message(300), METER2):
                flow.send(from_client, frame(comp[from_client].compress(text), rsv1=True))
        flow.close()

    stats, sink = decode(capture(tmp_path / "z.pcap", build), max_message=250)
    survivor = "cp->csms" if side_without_takeover == "client" else "csms->cp"
    other = "csms->cp" if survivor == "cp->csms" else "cp->csms"
    assert [(m.direction.value, m.message_id) for m in sink.messages] == (
        [(survivor, "m1"), (survivor, "m2"), (other, "m1")] if survivor == "cp->csms"
        else [(other, "m1"), (survivor, "m1"), (survivor, "m2")])
    assert sink.kinds == ["oversized_message", "oversized_message"]
    assert dict(stats.errors) == {"oversized_message": 2}


def test_capture_broken_frame_stops_only_that_direction(tmp_path: Path) -> None:
    def build(w: PcapWriter) -> None:
        flow = upgraded_flow(w)
        flow.send(True, client_frame(HEARTBEAT))
        flow.send(True, client_frame(b"{}", opcode=3))
        flow.send(True, client_frame(b'[2,"2","Heartbeat",{}]'))
        flow.send(False, server_frame(b'[3,"1",{"currentTime":"2024-01-01T00:00:00Z"}]'))
        flow.close()

    stats, sink = decode(capture(tmp_path / "bad.pcap", build))
    assert [(m.direction.value, m.message_id) for m in sink.messages] == [("cp->csms", "1"), ("csms->cp", "1")]
    assert [(d.kind, d.detail) for d in sink.dead_letters] == [
        ("ws_bad_opcode", "reserved opcode 3; rest of this direction not decoded")]
    assert sink.dead_letters[0].connection_id == sink.messages[0].connection_id
    assert (dict(stats.errors), stats.messages) == ({"ws_bad_opcode": 1}, 2)

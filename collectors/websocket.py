"""WebSocket frame decoding (RFC 6455) with permessage-deflate (RFC 7692).

One :class:`FrameDecoder` per direction of a connection. It accepts bytes in any chunking,
handles masking, 7/16/64-bit lengths, fragmentation with interleaved control frames, and
decompresses messages whose first frame has RSV1 set, with or without context takeover.
A framing error desynchronises the direction (reported once, the rest counted as undecoded);
a bad message (inflate failure, oversized) is reported and skipped.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


def _native_mask() -> Callable[[bytes, bytes], bytes] | None:
    """Our native extension's unmask (collectors.native), else the websockets library's C helper."""
    try:
        from chargewatch_native import unmask

        return unmask
    except ImportError:
        pass
    try:
        from websockets.speedups import apply_mask

        return apply_mask
    except ImportError:  # pragma: no cover - websockets is a dependency, speedups may be absent
        return None


_apply_mask = _native_mask()

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
DEFLATE_TAIL = b"\x00\x00\xff\xff"


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR data with the 4-byte masking key."""
    if _apply_mask is not None:
        return bytes(_apply_mask(data, mask))
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


@dataclass(slots=True)
class WsMessage:
    """A complete data message (text or binary), decompressed.

    Treated as immutable; not frozen because frozen dataclasses are slow to build (one per message).
    """

    opcode: int
    data: bytes
    wire_size: int
    compressed: bool
    masked: bool


@dataclass(frozen=True, slots=True)
class WsProblem:
    """A decoding problem; fatal ones stop decoding this direction."""

    kind: str
    detail: str
    fatal: bool
    raw: bytes = b""


@dataclass(frozen=True)
class DeflateParams:
    """Negotiated permessage-deflate parameters for one sending side."""

    no_context_takeover: bool = False


@dataclass
class _Partial:
    opcode: int
    compressed: bool
    masked: bool
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    wire: int = 0
    oversized: bool = False


class FrameDecoder:
    """Incremental decoder of one direction's WebSocket byte stream.

    Frames are parsed in place from the chunk fed (usually one TCP segment holding whole frames);
    only the incomplete frame at its end is buffered, and re-parsed once enough bytes arrived.
    """

    def __init__(self, deflate: DeflateParams | None, max_message: int) -> None:
        self.deflate = deflate
        self.max_message = max_message
        self._no_takeover = deflate is not None and deflate.no_context_takeover
        # First bytes _check_header always accepts when no message is in progress: FIN + text or
        # binary, with RSV1 (compressed) when permessage-deflate was negotiated.
        self._plain_heads = frozenset({0x81, 0x82, 0xC1, 0xC2} if deflate else {0x81, 0x82})
        self._inflater = zlib.decompressobj(-15) if deflate else None
        self._buf = bytearray()  # the start of an incomplete frame
        self._need = 0  # bytes _buf must hold before parsing it again can make progress
        self._skip = 0  # payload bytes of an oversized frame still to drop
        self._partial: _Partial | None = None
        self.desynced = False
        self.undecoded_bytes = 0
        self.close_code: int | None = None

    @property
    def in_message(self) -> bool:
        """Whether a data message is in progress (some of its frames seen, not its last)."""
        return self._partial is not None

    def feed(self, data: bytes) -> list[WsMessage | WsProblem]:
        """Decode what data completes; returns messages and problems in stream order."""
        out: list[WsMessage | WsProblem] = []
        if self.desynced:
            self.undecoded_bytes += len(data)
            return out
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return out
            data = bytes(self._buf)
            self._buf.clear()
        end = self._parse(data, out)
        if end < len(data) and not self.desynced:
            self._buf += memoryview(data)[end:]
        return out

    def _parse(self, data: bytes, out: list[WsMessage | WsProblem]) -> int:
        """Decode the frames in data; returns where the first incomplete frame starts (len(data) if none)."""
        size = len(data)
        pos = min(self._skip, size)
        self._skip -= pos
        while pos < size:
            # hlen grows as the header is read; whenever data ends first, _need says how much must arrive.
            hlen = 2
            if size - pos < hlen:
                return self._incomplete(pos, hlen)
            b0, length = data[pos], data[pos + 1] & 0x7F
            if length == 126:
                hlen = 4
                if size - pos < hlen:
                    return self._incomplete(pos, hlen)
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif length == 127:
                hlen = 10
                if size - pos < hlen:
                    return self._incomplete(pos, hlen)
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                if length >> 63:
                    return self._desync(data, pos, out, "ws_bad_length", "64-bit length with the top bit set")
            masked = data[pos + 1] & 0x80
            if masked:
                hlen += 4
                if size - pos < hlen:
                    return self._incomplete(pos, hlen)
            # Skip the full check for the usual first byte of a frame that starts a message on its own.
            problem = None if b0 in self._plain_heads and self._partial is None else self._check_header(b0, length)
            if problem:
                return self._desync(data, pos, out, problem[0], problem[1])
            if length > self.max_message and (b0 & 0x0F) < 8:
                pos += hlen  # the header is consumed; the payload is dropped as it arrives
                self._skip = length
                self._oversized(b0, length, hlen, out)
                if self.desynced:
                    self.undecoded_bytes += size - pos
                    return size
                skipped = min(self._skip, size - pos)
                self._skip -= skipped
                pos += skipped
                continue
            end = pos + hlen + length
            if end > size:
                return self._incomplete(pos, hlen + length)
            payload = data[pos + hlen:end]
            if masked:
                payload = unmask(payload, data[pos + hlen - 4:pos + hlen])
            pos = end
            self._frame(b0, payload, hlen + length, bool(masked), out)
            if self.desynced:
                self.undecoded_bytes += size - pos
                return size
        return pos

    def _incomplete(self, pos: int, need: int) -> int:
        """The frame at pos needs need bytes in all: stop parsing there until they arrived."""
        self._need = need
        return pos

    def _check_header(self, b0: int, length: int) -> tuple[str, str] | None:
        opcode, fin, rsv = b0 & 0x0F, b0 & 0x80, b0 & 0x70
        if opcode in (3, 4, 5, 6, 7) or opcode > 10:
            return "ws_bad_opcode", f"reserved opcode {opcode}"
        if rsv & 0x30 or (rsv & 0x40 and (self.deflate is None or opcode in (OP_CONT,) or opcode >= 8)):
            return "ws_bad_rsv", f"unexpected RSV bits {rsv >> 4:03b} on opcode {opcode}"
        if opcode >= 8 and (not fin or length > 125):
            return "ws_bad_control_frame", f"control frame opcode {opcode} fin={bool(fin)} len={length}"
        if opcode == OP_CONT and self._partial is None:
            return "ws_orphan_continuation", "continuation frame without a started message"
        if opcode in (OP_TEXT, OP_BINARY) and self._partial is not None:
            return "ws_unfinished_message", "new data message before the previous one finished"
        return None

    def _frame(self, b0: int, payload: bytes, wire: int, masked: bool, out: list[WsMessage | WsProblem]) -> None:
        opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
        if opcode >= 8:
            if opcode == OP_CLOSE and len(payload) >= 2:
                self.close_code = int.from_bytes(payload[:2], "big")
            return
        partial = self._partial
        if fin and partial is None:
            # A whole message in one frame, the common case: what _finish would make of a one-chunk
            # _Partial (never oversized here, _parse sent larger frames to _oversized).
            compressed = bool(b0 & 0x40)
            if compressed:
                inflated = self._inflate(payload)
                if isinstance(inflated, WsProblem):
                    out.append(inflated)
                    return
                payload = inflated
            out.append(WsMessage(opcode, payload, wire, compressed, masked))
            return
        if partial is None:
            partial = self._partial = _Partial(opcode, bool(b0 & 0x40), masked)
        partial.chunks.append(payload)
        partial.size += len(payload)
        partial.wire += wire
        if partial.size > self.max_message:
            partial.oversized = True
            partial.chunks.clear()
        if fin:
            self._partial = None
            out.append(self._finish(partial))

    def _oversized(self, b0: int, length: int, header: int, out: list[WsMessage | WsProblem]) -> None:
        """A single frame larger than the limit: its payload is skipped, the message reported."""
        opcode = b0 & 0x0F
        if self._partial is None and opcode != OP_CONT:
            self._partial = _Partial(opcode, bool(b0 & 0x40), True)
        assert self._partial is not None
        self._partial.oversized = True
        self._partial.wire += header + length
        if b0 & 0x80:
            partial, self._partial = self._partial, None
            out.append(self._finish(partial))

    def _finish(self, partial: _Partial) -> WsMessage | WsProblem:
        if partial.oversized:
            if partial.compressed and self._inflater is not None and not self._no_takeover:
                # The shared compression context now lacks this message: later ones cannot be decoded
                # (_parse counts the rest of the chunk as undecoded).
                self.desynced = True
            detail = f"message of {partial.wire} wire bytes exceeds {self.max_message}"
            return WsProblem("oversized_message", detail, False)
        data = b"".join(partial.chunks)
        if partial.compressed:
            inflated = self._inflate(data)
            if isinstance(inflated, WsProblem):
                return inflated
            data = inflated
        return WsMessage(partial.opcode, data, partial.wire, partial.compressed, partial.masked)

    def _inflate(self, data: bytes) -> bytes | WsProblem:
        if self._no_takeover or self._inflater is None or self._inflater.eof:
            # eof: the last message ended its deflate stream (BFINAL, RFC 7692 7.2.3.3), so its sender
            # had to start a new one; a finished inflater would silently turn every later message into b"".
            self._inflater = zlib.decompressobj(-15)
        try:
            result = self._inflater.decompress(data + DEFLATE_TAIL, self.max_message + 1)
        except zlib.error as exc:
            self._inflater = zlib.decompressobj(-15)
            return WsProblem("ws_inflate_error", f"permessage-deflate: {exc}", False, data)
        if len(result) > self.max_message or self._inflater.unconsumed_tail:
            self._inflater = zlib.decompressobj(-15)
            return WsProblem("oversized_message", f"message inflates beyond {self.max_message} bytes", False)
        return result

    def _desync(self, data: bytes, pos: int, out: list[WsMessage | WsProblem], kind: str, detail: str) -> int:
        """A framing error at pos: the rest of this direction is counted, not decoded."""
        self.desynced = True
        self.undecoded_bytes += len(data) - pos
        out.append(WsProblem(kind, detail + "; rest of this direction not decoded", True, data[pos:pos + 64]))
        return len(data)


class Frames(Protocol):
    """What a connection decoder needs of a frame decoder: this module's :class:`FrameDecoder`
    (the reference) or its native twin, ``chargewatch_native.FrameDecoder``."""

    desynced: bool

    @property
    def undecoded_bytes(self) -> int: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def in_message(self) -> bool: ...

    def feed(self, data: bytes) -> list[WsMessage | WsProblem]: ...


def frame_decoder(deflate: DeflateParams | None, max_message: int, native: bool = True) -> Frames:
    """A frame decoder for one side: the native one when the extension is installed (and native),
    else :class:`FrameDecoder`. Both give the same messages and problems
    (``tests/test_native_decoder.py``); the native one inflates with this module's zlib."""
    if native:
        try:
            from chargewatch_native import FrameDecoder as NativeFrameDecoder
        except ImportError:  # the extension is optional: see collectors.native
            pass
        else:
            no_takeover = deflate is not None and deflate.no_context_takeover
            decoder: Frames = NativeFrameDecoder(deflate is not None, no_takeover, max_message, WsMessage, WsProblem,
                                                 zlib.decompressobj, zlib.error)
            return decoder
    return FrameDecoder(deflate, max_message)

"""Redacting the TCP payloads of one captured OCPP connection in place, for evidence pcaps.

Exports must not carry what the collectors redact (idTags, secrets, the Basic-auth credential
of the upgrade), yet the packets should stay readable by Wireshark: so every change keeps the
length of what it replaces, and TCP sequence numbers stay valid.

Each direction is reassembled from its segments (first copy of a byte wins; retransmissions get
the same edits). Then, in that stream:

* the HTTP upgrade: the credentials after the scheme of ``Authorization`` headers become ``*``;
* each WebSocket message (unmasked, reassembled from its fragments, inflated when
  permessage-deflate compressed it) is judged with the collectors' own
  :class:`~chargewatch.redaction.Redactor`: the string values it would replace are overwritten
  with ``*`` inside their JSON quotes (re-masked as the client masked them). A compressed
  message is re-compressed to exactly its former size (:func:`recompress`) so the tools still
  inflate it and what follows; when no setting of zlib fits, it is blanked (spaces), as is any
  message that cannot be judged (not JSON but naming a sensitive key, a value that is not a
  string, a literal not found in the text);
* what cannot be parsed at all (bytes after a gap in the capture, a connection caught
  mid-stream, an unfinished frame at the end) is blanked too. TLS streams are left as they are:
  their content is encrypted.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from chargewatch.redaction import RAW_MARKERS, Redactor

SYN, ACK = 0x02, 0x10
BLANK = 0x20  # a space: blanked text stays printable
WINDOW = 32768  # the deflate window: what later compressed messages may copy from
_AUTHORIZATION = re.compile(rb"(?im)^(?:proxy-)?authorization:[ \t]*\S+[ \t]+([^\r\n]*)")
_MARKERS = (*RAW_MARKERS, b"setnetworkprofile", b"\\u")
_JUDGE = Redactor(b"evidence-export")  # only to learn what the collectors would replace


@dataclass(frozen=True)
class Segment:
    """One captured TCP segment of the connection (client = the charge point)."""

    from_client: bool
    seq: int
    flags: int
    payload: bytes


@dataclass
class RedactionReport:
    """What was changed, for the bundle's manifest."""

    authorization_headers: int = 0
    values_masked: int = 0
    messages_blanked: int = 0
    bytes_blanked_unparsed: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Deflate:
    """permessage-deflate as negotiated: whether each side keeps its compression context."""

    enabled: bool = False
    client_takeover: bool = True
    server_takeover: bool = True


def redact_segments(segments: list[Segment]) -> tuple[list[bytes | None], RedactionReport]:
    """The redacted payload of each segment (None: unchanged) and a report of the changes."""
    report = RedactionReport()
    out: list[bytes | None] = [None] * len(segments)
    streams = {side: _Stream(segments, side) for side in (True, False)}
    deflate = _Deflate()
    server = streams[False]
    if streams[True].is_tls():
        return out, report
    server_body = server.http_header(report, deflate)
    client_body = streams[True].http_header(report, deflate)
    for stream, start in ((streams[True], client_body), (server, server_body)):
        if start is not None:
            _Messages(stream, deflate, report).parse(start)
        stream.apply(segments, out)
    return out, report


class _Stream:
    """One direction reassembled: ``data`` (redacted in place), ``end`` = first byte of a gap."""

    def __init__(self, segments: list[Segment], from_client: bool) -> None:
        self.from_client = from_client
        mine = [s for s in segments if s.from_client == from_client]
        syn = next((s for s in mine if s.flags & SYN), None)
        with_data = [s for s in mine if s.payload]
        self.midstream = syn is None
        self.base = (syn.seq + 1) if syn is not None else (with_data[0].seq if with_data else 0)
        size = max((self._rel(s) + len(s.payload) for s in with_data if self._rel(s) >= 0), default=0)
        self.data, have = bytearray(size), bytearray(size)
        for s in with_data:
            rel, n = self._rel(s), len(s.payload)
            if rel < 0:
                continue
            if have.find(1, rel, rel + n) < 0:  # the common case: nothing of it placed yet
                self.data[rel:rel + n], have[rel:rel + n] = s.payload, b"\x01" * n
                continue
            for i, byte in enumerate(s.payload):  # a retransmission overlapping what is placed
                if not have[rel + i]:
                    self.data[rel + i], have[rel + i] = byte, 1
        gap = have.find(0)
        self.end = size if gap < 0 else gap
        self.original = bytes(self.data)

    def _rel(self, s: Segment) -> int:
        rel = (s.seq - self.base) & 0xFFFFFFFF
        return rel if rel < 1 << 31 else -1  # before the stream's start: nothing to place

    def is_tls(self) -> bool:
        return self.end >= 3 and self.data[0] == 0x16 and self.data[1] == 0x03

    def blank(self, start: int, end: int, report: RedactionReport) -> None:
        """Blank data[start:end] (bytes nothing could be parsed from)."""
        if end > start:
            self.data[start:end] = bytes([BLANK]) * (end - start)
            report.bytes_blanked_unparsed += end - start

    def http_header(self, report: RedactionReport, deflate: _Deflate) -> int | None:
        """Redact the upgrade's credentials (client) or read the negotiated deflate (server);
        returns where the WebSocket frames start, None when there are none to parse."""
        head = bytes(self.data[:self.end])
        starts_http = head.startswith(b"GET ") if self.from_client else head.startswith(b"HTTP/")
        cut = head.find(b"\r\n\r\n")
        if not starts_http or cut < 0:
            what = "caught mid-stream" if self.midstream else "without a complete HTTP upgrade"
            if self.data:
                report.notes.append(f"{'client' if self.from_client else 'server'} side {what}: payload blanked")
            self.blank(0, len(self.data), report)
            return None
        header = head[:cut + 4]
        for match in _AUTHORIZATION.finditer(header):
            self.data[match.start(1):match.end(1)] = b"*" * (match.end(1) - match.start(1))
            report.authorization_headers += 1
        if not self.from_client:
            if not re.match(rb"HTTP/1\.[01] 101\b", header):
                self.blank(cut + 4, len(self.data), report)
                return None
            ext = re.search(rb"(?im)^sec-websocket-extensions:([^\r\n]*)", header)
            value = ext.group(1).lower() if ext else b""
            deflate.enabled = b"permessage-deflate" in value
            deflate.client_takeover = b"client_no_context_takeover" not in value
            deflate.server_takeover = b"server_no_context_takeover" not in value
        return cut + 4

    def apply(self, segments: list[Segment], out: list[bytes | None]) -> None:
        """Put the redacted bytes back into every segment of this direction that changed."""
        for index, s in enumerate(segments):
            if s.from_client != self.from_client or not s.payload:
                continue
            rel = self._rel(s)
            if rel < 0:
                continue
            new = bytes(self.data[rel:rel + len(s.payload)]) + s.payload[len(self.data) - rel:]
            if new != s.payload:
                out[index] = new


class _Messages:
    """The WebSocket messages of one stream, judged and redacted one by one."""

    def __init__(self, stream: _Stream, deflate: _Deflate, report: RedactionReport) -> None:
        self.stream, self.deflate, self.report = stream, deflate, report
        takeover = deflate.client_takeover if stream.from_client else deflate.server_takeover
        self.takeover = takeover
        self.inflater = zlib.decompressobj(-15)
        self.history = b""

    def parse(self, pos: int) -> None:
        data, end = self.stream.data, self.stream.end
        parts: list[tuple[int, int, bytes | None]] = []  # (payload start, length, mask) of the message
        compressed = False
        while pos + 2 <= end:
            b0, b1 = data[pos], data[pos + 1]
            header = 2 + {126: 2, 127: 8}.get(b1 & 0x7F, 0) + (4 if b1 & 0x80 else 0)
            if pos + header > end:
                break
            length = b1 & 0x7F
            if length >= 126:
                length = int.from_bytes(data[pos + 2:pos + (4 if length == 126 else 10)], "big")
            mask = bytes(data[pos + header - 4:pos + header]) if b1 & 0x80 else None
            start = pos + header
            if start + length > end:
                break
            opcode = b0 & 0x0F
            if opcode not in (0, 1, 2, 8, 9, 10):
                break  # not WebSocket as the collectors decode it: the rest is blanked
            if opcode in (1, 2) or (opcode == 0 and not parts):
                if parts:  # a new message while one was unfinished: the fragments cannot be judged
                    self._blank_message(parts)
                parts, compressed = [], bool(b0 & 0x40) and self.deflate.enabled and opcode != 0
            if opcode in (0, 1, 2):
                parts.append((start, length, mask))
                if b0 & 0x80:
                    self._message(parts, compressed)
                    parts = []
            pos = start + length
        if parts:  # a message whose last fragment is missing: cannot be judged
            pos = parts[0][0]
        self.stream.blank(pos, len(data), self.report)

    def _message(self, parts: list[tuple[int, int, bytes | None]], compressed: bool) -> None:
        raw = b"".join(_unmask(self.stream.data[s:s + n], m) for s, n, m in parts)
        text: bytes | None = raw
        if compressed:
            text = self._inflate(raw)
        literals = None if text is None else sensitive_literals(text)
        if literals == [] and text is not None:
            self._seen(text, compressed)
            return
        masked = mask_literals(text, literals) if text is not None and literals is not None else None
        if masked is not None and literals is not None:
            new = recompress(masked, self.history if self.takeover else b"", len(raw)) if compressed else masked
            if new is not None:
                self._write(parts, new)
                self.report.values_masked += len(set(literals))
                self._seen(masked, compressed)
                return
        self._blank_message(parts)
        if text is not None:
            self._seen(text, compressed)

    def _seen(self, text: bytes, compressed: bool) -> None:
        """Keep the receiver's inflate window: what the compressed messages so far inflate to."""
        if compressed and self.takeover:
            self.history = (self.history + text)[-WINDOW:]

    def _blank_message(self, parts: list[tuple[int, int, bytes | None]]) -> None:
        self._write(parts, bytes([BLANK]) * sum(n for _, n, _ in parts))
        self.report.messages_blanked += 1

    def _inflate(self, raw: bytes) -> bytes | None:
        if not self.takeover:
            self.inflater = zlib.decompressobj(-15)
        try:
            return self.inflater.decompress(raw + b"\x00\x00\xff\xff")
        except zlib.error:
            self.inflater = zlib.decompressobj(-15)
            return None

    def _write(self, parts: list[tuple[int, int, bytes | None]], new: bytes) -> None:
        if len(new) != sum(n for _, n, _ in parts):
            raise ValueError("redaction must keep the message's length")  # would shift the TCP stream
        offset = 0
        for start, length, mask in parts:
            self.stream.data[start:start + length] = _unmask(new[offset:offset + length], mask)
            offset += length


def recompress(text: bytes, history: bytes, size: int) -> bytes | None:
    """A permessage-deflate payload of exactly size bytes that inflates to text for a receiver
    whose window holds history (context takeover; b"" without), or None when none fits.

    The redacted text has the original's length, so the receiver's window stays aligned and the
    sender's later messages still inflate (what they copy from a redacted value reads ``*``).
    zlib settings are tried until one compresses to at most size bytes with a difference that
    blocks inflating to nothing can fill (:func:`_filler`). Such blocks cannot fill every
    difference (not 1-4 bytes, nor 4 more than a multiple of 5), so when no setting fits, the text
    is also compressed as two blocks, cut at up to ``SPLITS`` places: a block boundary moves the
    length by a few bits, which is enough to reach one that fits.
    """
    for out in _compressed(text, history):  # each ends with 00 00 ff ff
        if len(out) - 4 == size:
            return out[:-4]  # the receiver adds the 00 00 ff ff back
        filler = _filler(size - len(out))
        if filler is not None:
            return out + filler
    return None


SPLITS = 256  # cut points tried per setting when no whole-message compression fits ...
SPLIT_BUDGET = 1 << 20  # ... fewer for long messages: at most this many bytes compressed per setting


def _compressed(text: bytes, history: bytes) -> Iterator[bytes]:
    """text deflated with each of _SETTINGS, then as two blocks cut at one of SPLITS places, with
    each of _SPLIT_SETTINGS: the first block ends where its last bit does (Z_BLOCK), or is
    followed by an empty one (Z_PARTIAL_FLUSH)."""
    extra = {"zdict": history} if history else {}
    for level, strategy, mem_level in _SETTINGS:
        packer = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level, strategy, **extra)
        yield packer.compress(text) + packer.flush(zlib.Z_SYNC_FLUSH)
    for (level, strategy, mem_level), mode in itertools.product(_SPLIT_SETTINGS, (zlib.Z_BLOCK, zlib.Z_PARTIAL_FLUSH)):
        cuts = max(2, min(SPLITS, SPLIT_BUDGET // max(1, len(text))))
        for cut in range(1, len(text), max(1, len(text) // cuts)):
            packer = zlib.compressobj(level, zlib.DEFLATED, -15, mem_level, strategy, **extra)
            yield (packer.compress(text[:cut]) + packer.flush(mode) + packer.compress(text[cut:])
                   + packer.flush(zlib.Z_SYNC_FLUSH))


def _filler(length: int) -> bytes | None:
    """length bytes of deflate blocks that inflate to nothing, the last one a stored block
    header whose ``00 00 ff ff`` the receiver appends; None for lengths that cannot be made.

    Empty stored blocks (``00 00 00 ff ff``) are 5 bytes each; m empty fixed-Huffman blocks
    (10 bits each) before the final 3-bit header give ceil((10m + 3) / 8) bytes: 1, 2, 3, 5, 6, 7, 8.
    """
    for fixed in range(7):
        bits = 10 * fixed + 3
        tail = (bits + 7) // 8
        if length >= tail and (length - tail) % 5 == 0:
            value = sum(1 << (10 * i + 1) for i in range(fixed))  # BFINAL 0, BTYPE 01, end-of-block 0000000
            return _EMPTY_STORED_BLOCK * ((length - tail) // 5) + value.to_bytes(tail, "little")
    return None


_EMPTY_STORED_BLOCK = b"\x00\x00\x00\xff\xff"  # header bits 000 + padding, LEN 0, NLEN 0xffff
_SETTINGS = [(level, strategy, mem_level) for level in (9, 6, 4, 2, 1)
             for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_RLE, zlib.Z_FIXED, zlib.Z_HUFFMAN_ONLY)
             for mem_level in (8, 9, 5, 2)]
_SPLIT_SETTINGS = _SETTINGS[:4]  # level 9, default strategy: the smallest output, with room for a filler


def _unmask(data: bytes | bytearray, mask: bytes | None) -> bytes:
    if mask is None:
        return bytes(data)
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def sensitive_literals(text: bytes) -> list[bytes] | None:
    """The JSON string literals (quotes included) of the values the collectors' redaction replaces
    in an OCPP-J message; [] when there are none, None when it cannot tell."""
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):
        return []
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(frame, list) and len(frame) == 4 and frame[0] in (2, 6) and isinstance(frame[2], str):
        original, redacted = frame[3], _JUDGE.payload(frame[2], frame[3])
    else:
        original, redacted = frame, _JUDGE.payload(None, frame)
    changed: list[Any] = []
    _diff(original, redacted, changed)
    literals: list[bytes] = []
    for value in changed:
        if not isinstance(value, str):
            return None
        literals.append(json.dumps(value, ensure_ascii=False).encode())
    return literals


def _diff(original: Any, redacted: Any, changed: list[Any]) -> None:
    """Collect the leaves of original that redaction replaced."""
    if isinstance(original, dict) and isinstance(redacted, dict):
        for key, value in original.items():
            _diff(value, redacted.get(key), changed)
    elif isinstance(original, list) and isinstance(redacted, list) and len(original) == len(redacted):
        for a, b in zip(original, redacted, strict=True):
            _diff(a, b, changed)
    elif original != redacted:
        changed.append(original)


def mask_literals(text: bytes, literals: list[bytes]) -> bytes | None:
    """text with every occurrence of each literal's content replaced by ``*`` (same length);
    None when a literal is not in the text as written (e.g. spelled with escapes)."""
    out = text
    for literal in dict.fromkeys(literals):
        if literal not in out:
            return None
        out = out.replace(literal, b'"' + b"*" * (len(literal) - 2) + b'"')
    return out
